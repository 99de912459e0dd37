"""Container packaging: the Dockerfile, its build context, the compose stack and the image's install steps."""
