#!/usr/bin/env bash
# bench/rerank_relevance.sh DATA_DIR OUT_DIR [SET...]: held-out relevance of
# the GNN reranker and of the HnswScan query adapter on the sets made by
# bench/rerank_relevance_data.py (default: RELEVANCE_SETS, or all), on a running
# cluster (PGHOST/PGPORT; bench/run.sh relevance starts one).  For each set
# it prints, and writes to OUT_DIR/relevance/SET.txt, one line per method:
# topic/class P@10 of the 400 held-out queries through the index scan (k 10,
# ef_search 100, rerank_candidates 100), the training seconds, and the mean
# latency of plain, reranked and adapted scans in alternating passes.  The
# non-learned baseline comes from the data generator (baseline.txt).
set -euo pipefail
if [ "$1" != --one ]; then
	dir=$1
	out=$2/relevance
	shift 2
	mkdir -p "$out"
	for set in ${*:-${RELEVANCE_SETS:-topics-s1.3 topics-s1.5 topics-s1.7 fmnist wordnet}}; do
		bash "$0" --one "$dir/$set" "$set" | tee "$out/$set.txt"
	done
	exit 0
fi
# --one SET_DIR SET: one set
data=$2
set=$3
psql_q() { psql -X -q -v ON_ERROR_STOP=1 -d postgres "$@"; }
# items, train and heldout tables of the set, and the index (bench/relevance_load.sh)
. "$(dirname "$0")/relevance_load.sh"
relevance_load "$data" postgres
relevance_timing postgres
psql_q <<SQL
CREATE OR REPLACE FUNCTION p10(exact bool) RETURNS float8 LANGUAGE plpgsql AS \$\$
DECLARE
	s float8 := 0;
	n int := 0;
	r record;
BEGIN
	FOR r IN SELECT label, q FROM heldout LOOP
		IF exact THEN
			s := s + (SELECT count(*) FILTER (WHERE label = r.label) FROM
				(SELECT label FROM items ORDER BY l2_distance(v, r.q) LIMIT 10) t) / 10.0;
		ELSE
			s := s + (SELECT count(*) FILTER (WHERE label = r.label) FROM
				(SELECT label FROM items ORDER BY v <-> r.q LIMIT 10) t) / 10.0;
		END IF;
		n := n + 1;
	END LOOP;
	RETURN s / n;
END \$\$;
SQL
psql_q -At <<SQL
SET gnnvec.ef_search = 100;
SET gnnvec.rerank_candidates = 100;
SELECT '$set exact ' || round(p10(true)::numeric, 3);
SET enable_seqscan = off;
SELECT '$set plain_scan ' || round(p10(false)::numeric, 3);
SELECT gnnvec_model_reset('items_v') >= 0 AS reset;
SELECT count(*) >= 0 AS untrained_made FROM gnnvec_train('items_v', 'SELECT q, p FROM train LIMIT 8', epochs => 1,
	learning_rate => 1e-7, validation_fraction => 0);
SET gnnvec.rerank = on;
SELECT '$set untrained ' || round(p10(false)::numeric, 3);
RESET gnnvec.rerank;
SELECT gnnvec_model_reset('items_v') >= 0 AS reset;
SELECT clock_timestamp() AS t0 \gset
SELECT count(*) >= 0 AS trained FROM gnnvec_train('items_v', 'SELECT q, p FROM train', epochs => 3);
SELECT '$set training_seconds ' || round(extract(epoch FROM clock_timestamp() - :'t0')::numeric, 1);
SELECT '$set config ' || config FROM gnnvec_model_info('items_v') WHERE scope = 'Rerank';
SET gnnvec.rerank = on;
SELECT '$set trained ' || round(p10(false)::numeric, 3);
RESET gnnvec.rerank;
-- the index's HnswScan query adapter (docs/microlora.md), rank and alpha as documented there
SET gnnvec.lora_alpha = 1;
SELECT gnnvec_model_reset('items_v', 'HnswScan') >= 0 AS reset;
SELECT clock_timestamp() AS t0 \gset
SELECT count(*) >= 0 AS adapted FROM gnnvec_train('items_v', 'SELECT q, p FROM train', scope => 'HnswScan',
	epochs => 3, learning_rate => 0.05);
SELECT '$set adapter_training_seconds ' || round(extract(epoch FROM clock_timestamp() - :'t0')::numeric, 1);
SELECT '$set adapter_config ' || config FROM gnnvec_model_info('items_v') WHERE scope = 'HnswScan';
SET gnnvec.adapt = on;
SELECT '$set adapter ' || round(p10(false)::numeric, 3);
RESET gnnvec.adapt;
SELECT ms_per_query() >= 0 AS warm;
SET gnnvec.rerank = on;
SELECT ms_per_query() >= 0 AS warm;
RESET gnnvec.rerank;
$(for pass in 1 2; do
	echo "SELECT '$set plain_ms ' || round(ms_per_query()::numeric, 3);"
	for setting in rerank adapt; do
		echo "SET gnnvec.$setting = on;"
		echo "SELECT '$set ${setting/adapt/adapter}_ms ' || round(ms_per_query()::numeric, 3);"
		echo "RESET gnnvec.$setting;"
	done
done)
SQL
echo "$set baseline(k val test exact_numpy) $(cat "$data/baseline.txt")"
