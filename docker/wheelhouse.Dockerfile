# The wheelhouse as an image, so that the image builds copy it from one place instead of
# sending it with every build context: every pinned requirement as a wheel for Linux
# x86_64 CPython 3.11 (tools/wheelhouse.py) and a static tini under /wheels/bin.
#
# Built by `make images` with build/wheelhouse as the context:
#   docker build -f docker/wheelhouse.Dockerfile -t sclake-wheelhouse:0.1.0 build/wheelhouse
FROM scratch
COPY . /wheels/
