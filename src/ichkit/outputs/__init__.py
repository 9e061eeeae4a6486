"""What a run hands over: the ensemble choice (stack), competition submissions, predictions on new scans,
test masks and volumes, and the report."""
