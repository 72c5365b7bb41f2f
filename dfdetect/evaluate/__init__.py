"""Evaluation, below the studies and above train and score: evaluation.py (a run's checkpoint on a
store, or any score table -> the metrics of dfdetect/metrics.py at 0.5, the EER and the validation
thresholds, with breakdowns), score_files.py (reading any system's score file), report.py (the HTML
and Markdown comparison of runs, with the failure warnings) and model_card.py (`dfdetect export`)."""
