"""Streaming multipart/form-data reader: file parts go to hashed temp files, written off the event loop."""

from gateway.multipart.model import FilePart, FormData, MultipartError, MultipartLimits
from gateway.multipart.reader import read_multipart

__all__ = ["FilePart", "FormData", "MultipartError", "MultipartLimits", "read_multipart"]
