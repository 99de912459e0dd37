"""The embedded BranchKey-compatible local aggregator."""
