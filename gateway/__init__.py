"""BranchKey Gateway: a localhost HTTP sidecar for BranchKey federated learning."""

__version__ = "0.1.0"
