"""Download real Geneformer model files with Helical's own downloader (needs internet).

Run in the worker image with the model cache volume at ``/models`` (the ``models-fetch``
service does this)::

    docker compose --profile models run --rm models-fetch gf-6L-10M-i2048[,gf-12L-38M-i4096]

Files land in Helical's cache layout under ``$CACHE_DIR_HELICAL_PREFIX`` (``/models``),
where sclake's workers read them offline. Only run this where the hub is reachable: offline,
Helical's downloader deletes cached files it cannot verify.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    names = [n.strip() for arg in argv for n in arg.split(",") if n.strip()]
    if not names:
        print("usage: fetch.py MODEL[,MODEL...] ...", file=sys.stderr)
        return 2
    prefix = os.environ.get("CACHE_DIR_HELICAL_PREFIX")
    if not prefix:
        print("fetch.py: CACHE_DIR_HELICAL_PREFIX is not set; it names the model cache folder", file=sys.stderr)
        return 2

    from helical.models.geneformer import GeneformerConfig
    from helical.utils.downloader import Downloader

    downloader = Downloader()
    for name in names:
        files = GeneformerConfig(model_name=name).list_of_files_to_download
        for file in files:
            downloader.download_via_name(file)
        print(f"fetched {name}: {len(files)} files under {prefix}/.cache/helical/models")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
