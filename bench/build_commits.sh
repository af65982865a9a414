#!/usr/bin/env bash
# bench/build_commits.sh DB OPCLASS ROUNDS COMMIT...: backend CPU seconds of
# a serial CREATE INDEX by the gnnvec of each commit, alternating, on a
# running server whose data directory is PGDATA (PGHOST/PGPORT as psql's;
# run as root, the server as postgres).  Each commit is built into a
# scratch clone; before each build the server's gnnvec.so is replaced (a
# new file moved over it, never overwritten in place: live processes map
# it) and the server restarted, so each build runs in a fresh backend.
# DB must hold a table items(embedding vector(n)).  Prints one line per
# build: round, commit, CPU seconds; compare commits within a round.
#
#	PGDATA=/tmp/mb/data PGHOST=/tmp/mb PGPORT=56100 \
#	  bash bench/build_commits.sh w_g vector_cosine_ops 5 cc77dd8 f09bf09
set -euo pipefail
db=$1
opclass=$2
rounds=$3
shift 3
repo=$(cd "$(dirname "$0")/.." && git rev-parse --show-toplevel)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
libdir=$(pg_config --pkglibdir)
for c in "$@"; do
	git clone -q "$repo" "$scratch/src-$c"
	git -C "$scratch/src-$c" checkout -q "$c"
	make -s -C "$scratch/src-$c" gnnvec.so >/dev/null
	cp "$scratch/src-$c/gnnvec.so" "$scratch/gnnvec-$c.so"
done
for r in $(seq "$rounds"); do
	for c in "$@"; do
		cp "$scratch/gnnvec-$c.so" "$libdir/gnnvec.so.new"
		mv "$libdir/gnnvec.so.new" "$libdir/gnnvec.so"
		su postgres -c "pg_ctl -D '$PGDATA' -w restart -m fast" >/dev/null
		cpu=$(psql -X -q -At -d "$db" <<-SQL
			SET max_parallel_maintenance_workers = 0;
			SET maintenance_work_mem = '2GB';
			SELECT split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint AS c0 \gset
			CREATE INDEX build_commits ON items USING gnnhnsw (embedding $opclass)
				WITH (m = 16, ef_construction = 64);
			SELECT split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint AS c1 \gset
			DROP INDEX build_commits;
			SELECT round((:c1 - :c0) / 1e9, 2);
		SQL
		)
		echo "$r $c $cpu"
	done
done
