#!/usr/bin/env bash
# bench/rerank_latency.sh DATA_DIR OUT_DIR [SET...]: backend CPU time per query of
# reranked against plain index scans at the same ef (ef_search 100,
# rerank_candidates 100, k 10) on the relevance sets (docs/gnn.md), on a
# running cluster (PGHOST/PGPORT).  Each set gets a database of its own
# (relevance_SET), loaded and trained as bench/rerank_relevance.sh does
# (gnnvec_train, 3 epochs) when it has no trained index yet, so that
# reruns after a rebuild measure the same models.  The backend's CPU time
# (/proc/self/schedstat, as bench/pg_bench.sh) over the 400 held-out queries
# after a warm-up pass of each kind, plain and reranked alternating, best
# of LATENCY_PASSES (5); one line per set (also to OUT_DIR/rerank_latency.txt):
# ms per query, the ratio and the model's blend.
set -euo pipefail
dir=$1
out=$2
shift 2
mkdir -p "$out"
: >"$out/rerank_latency.txt"
. "$(dirname "$0")/relevance_load.sh"
for set in ${*:-${RELEVANCE_SETS:-topics-s1.3 topics-s1.5 topics-s1.7 fmnist wordnet}}; do
	db=relevance_${set//[-.]/_}
	if [ -z "$(psql -X -At -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]; then
		psql -X -q -d postgres -c "CREATE DATABASE $db"
	fi
	if [ -z "$(psql -X -At -d "$db" -c "SELECT 1 FROM pg_class WHERE relname = 'items_v'" 2>/dev/null)" ] ||
		[ -z "$(psql -X -At -d "$db" -c "SELECT 1 FROM gnnvec_model_info('items_v') WHERE scope = 'Rerank'")" ]; then
		relevance_load "$dir/$set" "$db"
		psql -X -q -At -v ON_ERROR_STOP=1 -d "$db" >/dev/null <<-SQL
			SET gnnvec.ef_search = 100;
			SET gnnvec.rerank_candidates = 100;
			SELECT count(*) FROM gnnvec_train('items_v', 'SELECT q, p FROM train', epochs => 3);
		SQL
	fi
	relevance_timing "$db"
	psql -X -q -At -v ON_ERROR_STOP=1 -d "$db" <<-SQL | tr '\n' ' ' |
		CREATE TEMP TABLE passes (what text, ms float8);
		SET gnnvec.ef_search = 100;
		SET gnnvec.rerank_candidates = 100;
		SET enable_seqscan = off;
		SELECT ms_per_query(true) >= 0 AS warm \g /dev/null
		SET gnnvec.rerank = on;
		SELECT ms_per_query(true) >= 0 AS warm \g /dev/null
		RESET gnnvec.rerank;
		$(for pass in $(seq "${LATENCY_PASSES:-5}"); do
			echo "INSERT INTO passes SELECT 'plain', ms_per_query(true);"
			echo "SET gnnvec.rerank = on;"
			echo "INSERT INTO passes SELECT 'rerank', ms_per_query(true);"
			echo "RESET gnnvec.rerank;"
		done)
		SELECT round(min(ms)::numeric, 4) FROM passes GROUP BY what ORDER BY what;
		SELECT blend FROM (SELECT config::jsonb -> 'blend' AS blend FROM gnnvec_model_info('items_v') WHERE scope = 'Rerank') b;
	SQL
		awk -v s="$set" '{ printf "%-12s plain_cpu_ms %s rerank_cpu_ms %s ratio %.3f blend %s\n", s, $1, $2, $2 / $1, $3 $4 $5 $6 $7 $8 }' |
		tee -a "$out/rerank_latency.txt"
done
