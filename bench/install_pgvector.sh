#!/usr/bin/env bash
# Build pgvector from a source checkout and install it into a private
# installation (test/run.sh bench calls this when PGVECTOR_SRC is set).
#
#   install_pgvector.sh SRC_DIR DESTDIR [PG_CONFIG]
#
# The build happens in a copy, so the checkout stays clean; pgvector's own
# Makefile flags are kept (it builds with -march=native), as its users get it.
set -euo pipefail
src=$1
dest=$2
pg_config=${3:-pg_config}
[ -f "$src/vector.control" ] || { echo "install_pgvector.sh: $src is not a pgvector source tree" >&2; exit 1; }
build=$(mktemp -d /tmp/pgvector-build.XXXXXX)
trap 'rm -rf "$build"' EXIT
cp -r "$src/." "$build"
make -s -C "$build" PG_CONFIG="$pg_config" -j2
make -s -C "$build" PG_CONFIG="$pg_config" install DESTDIR="$dest"
echo "pgvector $(sed -n "s/^default_version = '\(.*\)'/\1/p" "$src/vector.control") installed under $dest"
