"""`dfdetect demo`: a generated corpus run through every stage that exists, offline."""
