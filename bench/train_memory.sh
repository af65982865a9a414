#!/usr/bin/env bash
# bench/train_memory.sh N [N...]: what gnnvec_train holds, by index size, on a
# running cluster (PGHOST/PGPORT; run as a user that may read the server's
# /proc/PID/status, e.g. the server's own).
#
# For each N: N random 32-d rows (seeded) in a gnnhnsw index (m 8,
# ef_construction 32), built once and kept as table mem_N; then
# gnnvec_train on 2,000 pairs (a row's vector moved a little, and the row),
# 2 epochs, under maintenance_work_mem = $MWM (default 32MB).  Prints the
# training's own account (memory_peak_kb and view_resets in the stored
# config: its memory contexts at their peak plus its estimate of the
# malloc'd model state), the peak RssAnon of the backend sampled every 50
# ms (private memory: shared buffers are not in it), and the seconds.
set -euo pipefail
mwm=${MWM:-32MB}
psql_q() { psql -X -q -v ON_ERROR_STOP=1 -d postgres "$@"; }
psql_q -c 'CREATE EXTENSION IF NOT EXISTS gnnvec'
for n in "$@"; do
	t=mem_$n
	if [ "$(psql_q -At -c "SELECT to_regclass('${t}_pairs') IS NOT NULL")" != t ]; then
		psql_q <<SQL
DROP TABLE IF EXISTS $t;
SELECT setseed(0.42);
CREATE TABLE $t (id int PRIMARY KEY, v vector(32));
INSERT INTO $t SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, 32) WHERE i > 0)::vector
	FROM generate_series(1, $n) i;
SET maintenance_work_mem = '1GB';
CREATE INDEX ${t}_v ON $t USING gnnhnsw (v vector_l2_ops) WITH (m = 8, ef_construction = 32);
CREATE TABLE ${t}_pairs AS SELECT id, v + '[0.01,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]' AS q, v AS p
	FROM $t WHERE id % ($n / 2000) = 0 ORDER BY id;
SQL
	fi
	psql_q -c "SELECT gnnvec_model_reset('${t}_v')" >/dev/null
	pidfile=$(mktemp)
	start=$(date +%s.%N)
	psql_q -At >/dev/null <<SQL &
\o $pidfile
SELECT pg_backend_pid();
\o
SET maintenance_work_mem = '$mwm';
SELECT count(*) FROM gnnvec_train('${t}_v', 'SELECT q, p FROM ${t}_pairs ORDER BY id', epochs => 2);
SQL
	job=$!
	peak=0
	while kill -0 $job 2>/dev/null; do
		pid=$(cat "$pidfile" 2>/dev/null || true)
		if [ -n "$pid" ] && [ -r /proc/$pid/status ]; then
			kb=$(awk '/^RssAnon:/ {print $2}' /proc/$pid/status 2>/dev/null || echo 0)
			[ "${kb:-0}" -gt "$peak" ] && peak=$kb
		fi
		sleep 0.05
	done
	wait $job
	secs=$(echo "$(date +%s.%N) - $start" | bc)
	rm -f "$pidfile"
	echo "rows $n maintenance_work_mem $mwm rss_anon_peak_kb $peak seconds $secs" \
		"$(psql_q -At -c "SELECT 'memory_peak_kb ' || (config::jsonb ->> 'memory_peak_kb') || ' view_resets ' || (config::jsonb ->> 'view_resets') FROM gnnvec_model_info('${t}_v')" 2>/dev/null || true)"
done
