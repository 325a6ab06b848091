#!/bin/sh
# Installs the anchors benchmarks/run.py measures mailtrack against, and does nothing that is already done:
#   - public-inbox, from Debian (public-inbox-init, public-inbox-mda and its Perl library; Xapian for its
#     full index, SQLite for its overview);
#   - Roundup, from PyPI: the `bench` extra of pyproject.toml, into the Python that runs the benchmark.
# Usage: benchmarks/install.sh [PYTHON]   (default: .venv/bin/python of this tree if there is one, else python3)
# apt-get needs root: run it as root, or with sudo on the PATH.
set -eu
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then PYTHON=$1; elif [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi

debian="public-inbox libsearch-xapian-perl libdbd-sqlite3-perl"
if command -v public-inbox-mda >/dev/null 2>&1 && perl -MPublicInbox::InboxWritable -MSearch::Xapian -MDBD::SQLite -e 1 2>/dev/null; then
    echo "public-inbox: installed already"
else
    if [ "$(id -u)" -eq 0 ]; then as_root=""; else as_root=sudo; fi
    $as_root apt-get update -qq
    # shellcheck disable=SC2086 # the package list is meant to split
    DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq $debian
fi

# pip does nothing when the extra is satisfied already (and installs this tree, editable, when it is not there)
"$PYTHON" -m pip install -q -e '.[bench]'
echo "anchors ready: $PYTHON benchmarks/run.py --quick"
