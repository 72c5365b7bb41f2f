"""Stage 3: the four detector heads (one file each) and, beside them, the code that trains them."""
