#!/bin/sh
# The install steps of the container image. The Dockerfile runs this script and nothing else to install,
# and tests/packaging/test_container.py runs the same script, so what the image installs is tested here.
#
#   install.sh wheels SRC WHEELS   build the project's wheel and a wheel of every runtime dependency
#                                  (no test extra) into WHEELS (the builder stage; needs the package index)
#   install.sh venv WHEELS VENV    create the virtualenv VENV and install the project from WHEELS alone,
#                                  never from an index (the runtime stage; no network, no compiler)
#
# PYTHON names the interpreter (default python3).
set -eu

python=${PYTHON:-python3}

usage() {
  echo "usage: install.sh wheels SRC WHEELS | install.sh venv WHEELS VENV" >&2
  exit 2
}

[ "$#" -eq 3 ] || usage
case "$1" in
  wheels)
    "$python" -m pip wheel --wheel-dir "$3" "$2"
    ;;
  venv)
    # No pip or setuptools inside: the interpreter's own pip (22.3 or newer) installs into it.
    "$python" -m venv --without-pip "$3"
    "$python" -m pip --python "$3/bin/python" install --no-index --find-links "$2" branchkey-gateway
    ;;
  *)
    usage
    ;;
esac
