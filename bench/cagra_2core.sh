#!/usr/bin/env bash
# bench/cagra_2core.sh DATA_DIR OUT_DIR: the CAGRA build against the hnsw
# build on 2 cores, in the index.  Run by test/run.sh bench as the server
# user (shared_buffers and maintenance_work_mem 2GB there):
#
#	BENCH_SCRIPT=cagra_2core.sh bash test/run.sh bench words-gcide-100
#
# For each set in SETS (default: DATA_DIR's own; siblings of DATA_DIR),
# loads base.copy and builds, alternating, REPS times each (default 2):
# build_method 'hnsw' and build_method 'cagra' (device cpu), m 16,
# ef_construction 64, graph_degree 32, intermediate_graph_degree 48, both
# at max_parallel_maintenance_workers = 1: the hnsw build runs one parallel
# worker beside the participating leader, the CAGRA build runs its stages
# on 1 + max_parallel_maintenance_workers = 2 threads (and links the upper
# levels on a thread of its own meanwhile).  Prints each build's wall time
# (psql \timing), the backend's CPU time (all its threads, /proc/self/stat)
# and the CPU time of the postmaster's reaped children (the parallel
# worker; autovacuum is off for the table), and the DEBUG1 line that says
# how each build ran.  Writes OUT_DIR/cagra_2core.csv.
set -euo pipefail
dataset=$1
out=$2
sets=${SETS:-$(basename "$dataset")}
reps=${REPS:-2}
db=gnnvec_cagra_2core
tck=$(getconf CLK_TCK)
csv=$out/cagra_2core.csv
echo "set,build,rep,wall_seconds,backend_cpu_seconds,worker_cpu_seconds,main_thread_cpu_seconds" >"$csv"

# CPU seconds: the backend's threads (fields 14-15 of its stat), the
# postmaster's waited-for children (fields 16-17 of the postmaster's), the
# backend's main thread alone (schedstat, nanoseconds)
main_cpu="split_part(pg_read_file('/proc/self/schedstat'), ' ', 1)::bigint / 1e9"
backend_cpu="(split_part(pg_read_file('/proc/self/stat'), ' ', 14)::bigint +
	split_part(pg_read_file('/proc/self/stat'), ' ', 15)::bigint) / $tck::numeric"
pm_stat="pg_read_file('/proc/' || split_part(pg_read_file('postmaster.pid'), E'\n', 1) || '/stat')"
children_cpu="(split_part($pm_stat, ' ', 16)::bigint +
	split_part($pm_stat, ' ', 17)::bigint) / $tck::numeric"

for set in $sets; do
	dir=$(dirname "$dataset")/$set
	dim=$(sed -n 's/^dim=//p' "$dir/meta.txt")
	case $(sed -n 's/^metric=//p' "$dir/meta.txt") in
		cosine) opclass=vector_cosine_ops ;;
		ip) opclass=vector_ip_ops ;;
		*) opclass=vector_l2_ops ;;
	esac
	dropdb --if-exists $db
	createdb $db
	psql -X -q -v ON_ERROR_STOP=1 -d $db <<-SQL
		CREATE EXTENSION gnnvec;
		CREATE TABLE items (id int PRIMARY KEY, embedding vector($dim))
			WITH (autovacuum_enabled = off);
		COPY items FROM '$dir/base.copy' (FORMAT binary);
		VACUUM ANALYZE items;
	SQL
	for rep in $(seq "$reps"); do
		for method in hnsw cagra; do
			with="m = 16, ef_construction = 64, build_method = '$method'"
			[ $method = cagra ] &&
				with="$with, device = 'cpu', graph_degree = 32, intermediate_graph_degree = 48"
			res=$(psql -X -q -At -v ON_ERROR_STOP=1 -d $db 2>&1 <<-SQL
				DROP INDEX IF EXISTS items_embedding;
				CHECKPOINT;
				SET max_parallel_maintenance_workers = 1;
				SET maintenance_work_mem = '2GB';
				SELECT $backend_cpu AS b0, $children_cpu AS c0, $main_cpu AS m0 \gset
				SET client_min_messages = debug1;
				\timing on
				CREATE INDEX items_embedding ON items USING gnnhnsw (embedding $opclass) WITH ($with);
				\timing off
				SET client_min_messages = notice;
				SELECT pg_sleep(1) \gset
				SELECT 'cpu ' || ($backend_cpu - :b0) || ' ' || ($children_cpu - :c0) || ' ' || ($main_cpu - :m0);
			SQL
			)
			# a serial build prints no "parallel build" line: not an error
			grep -E 'ERROR|parallel build|gnnhnsw cagra' <<<"$res" | sed 's/^/  /' || true
			line=$(awk -v set="$set" -v m=$method -v rep="$rep" '
				/^Time: / { wall = $2 / 1000 }
				/^cpu / { printf "%s,%s,%s,%.2f,%.2f,%.2f,%.2f\n", set, m, rep, wall, $2, $3, $4 }' <<<"$res")
			echo "$line"
			echo "$line" >>"$csv"
		done
	done
	dropdb $db
done
