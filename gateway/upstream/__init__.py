"""The BranchKey protocol dialects behind one small interface."""
