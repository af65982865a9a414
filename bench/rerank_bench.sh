#!/usr/bin/env bash
# bench/rerank_bench.sh DATA_DIR OUT_DIR: the relevance benchmark of the GNN
# reranker on a running cluster (PGHOST/PGPORT), as the server user; run by
# `bench/run.sh rerank` through test/run.sh bench.  Data: bench/rerank_data.py.
#
# For each data set (topics, raw) it loads the items, builds a gnnhnsw index
# (m = 8, ef_construction = 64), and measures on the held-out queries, at
# gnnvec.ef_search = 100, k = 10, against the data set's true relevance:
#   index      plain index scan (ORDER BY v <-> q LIMIT 10)
#   exact      brute force on the raw embeddings (sequential scan)
#   untrained  gnnvec_search with a freshly initialised model (no steps)
#   trained    gnnvec_train on the logged pairs (20% held out for model
#              selection), then gnnvec_search
#   feedback   a fresh model taught only by online feedback: the first 300
#              logged pairs as gnnvec_feedback events, then
#              gnnvec_feedback_train
#   lora       the index's HnswScan MicroLoRA adapter trained on the logged
#              pairs (6 epochs, alpha 1, SGD step 0.05), then the plain index
#              scan with gnnvec.adapt = on
# then the learning curve (held-out recall after 1..6 epochs from scratch)
# and the latency of reranked and plain index scans.
set -euo pipefail
data=$1
out=$2
psql_q() { psql -X -q -v ON_ERROR_STOP=1 -d postgres "$@"; }

psql_q -c "CREATE EXTENSION IF NOT EXISTS gnnvec"
psql_q <<'SQL'
-- the tables come later, per data set
SET check_function_bodies = off;
CREATE OR REPLACE FUNCTION bench_topk(method text, qv vector) RETURNS int[] LANGUAGE plpgsql AS $$
BEGIN
	IF method = 'search' THEN
		RETURN (SELECT array_agg(i.id ORDER BY s.ord)
				FROM gnnvec_search('items_v', qv, 10) WITH ORDINALITY s(tid, distance, score, ord)
				JOIN items i ON i.ctid = s.tid);
	END IF;
	IF method = 'exact' THEN
		-- a function call the index cannot serve: a sequential scan and sort
		RETURN (SELECT array_agg(id) FROM (SELECT id FROM items ORDER BY l2_distance(v, qv), id LIMIT 10) t);
	END IF;
	RETURN (SELECT array_agg(id) FROM (SELECT id FROM items ORDER BY v <-> qv LIMIT 10) t);
END $$;
-- Recall@10 (relevant found / min(10, relevant)) and NDCG@10 (binary gains)
CREATE OR REPLACE FUNCTION bench_eval(method text, label text)
	RETURNS TABLE (method_label text, recall_at_10 float8, ndcg_at_10 float8)
	LANGUAGE sql AS $$
	WITH tops AS (SELECT h.qid, h.relevant, bench_topk(method, h.q) AS top FROM heldout h),
	per_query AS (
		SELECT t.qid,
			(SELECT count(*) FROM unnest(t.top) x WHERE x = ANY (t.relevant))::float8
				/ least(10, cardinality(t.relevant)) AS recall,
			(SELECT coalesce(sum(1 / log(2, o + 1.0)), 0) FROM unnest(t.top) WITH ORDINALITY u(x, o)
				WHERE x = ANY (t.relevant))::float8
			/ (SELECT sum(1 / log(2, o + 1.0)) FROM generate_series(1, least(10, cardinality(t.relevant))) o)::float8
				AS ndcg
		FROM tops t)
	SELECT label, avg(recall), avg(ndcg) FROM per_query
$$;
-- mean milliseconds per query over the held-out queries (one pass)
CREATE OR REPLACE FUNCTION bench_latency() RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
	t0 timestamptz;
	n int := 0;
	r record;
BEGIN
	t0 := clock_timestamp();
	FOR r IN SELECT q FROM heldout LOOP
		PERFORM id FROM (SELECT id FROM items ORDER BY v <-> r.q LIMIT 10) t;
		n := n + 1;
	END LOOP;
	RETURN extract(epoch FROM clock_timestamp() - t0) * 1000 / n;
END $$;
-- rounds of a plain pass then a reranked pass, after a reranked warm-up
-- pass (refined embeddings cached); gnnvec.rerank is left on
CREATE OR REPLACE FUNCTION bench_latency_rounds(rounds int)
	RETURNS TABLE (round int, plain_ms float8, rerank_ms float8) LANGUAGE plpgsql AS $$
BEGIN
	PERFORM set_config('gnnvec.rerank', 'on', false);
	PERFORM bench_latency();
	FOR i IN 1 .. rounds LOOP
		round := i;
		PERFORM set_config('gnnvec.rerank', 'off', false);
		plain_ms := bench_latency();
		PERFORM set_config('gnnvec.rerank', 'on', false);
		rerank_ms := bench_latency();
		RETURN NEXT;
	END LOOP;
END $$;
SQL

for set in topics raw; do
	echo "== rerank: data set $set"
	psql_q <<SQL
DROP TABLE IF EXISTS items, train, heldout, results, curve, latency, wide, wide_latency;
CREATE TABLE items (id int PRIMARY KEY, v vector(128));
CREATE TABLE train (q vector(128), p vector(128));
CREATE TABLE heldout (qid int, q vector(128), relevant int[]);
\copy items FROM '$data/$set/items.copy'
\copy train FROM '$data/$set/train.copy'
\copy heldout FROM '$data/$set/heldout.copy'
CREATE INDEX items_v ON items USING gnnhnsw (v vector_l2_ops) WITH (m = 8, ef_construction = 64);
ANALYZE items;
CREATE TABLE results (method text, recall_at_10 float8, ndcg_at_10 float8, seconds float8);
CREATE TABLE curve (epoch int, loss float8, heldout_recall_at_10 float8);
SET gnnvec.ef_search = 100;
SET gnnvec.rerank_candidates = 100;
SET enable_seqscan = off;
INSERT INTO results SELECT *, NULL FROM bench_eval('index', 'index');
RESET enable_seqscan;
INSERT INTO results SELECT *, NULL FROM bench_eval('exact', 'exact');
-- untrained: one epoch at a learning rate too small to move anything
SELECT count(*) FROM gnnvec_train('items_v', 'SELECT q, p FROM train LIMIT 8', epochs => 1,
	learning_rate => 1e-7, validation_fraction => 0);
INSERT INTO results SELECT *, NULL FROM bench_eval('search', 'untrained');
SELECT gnnvec_model_reset('items_v');
-- online feedback only
SELECT clock_timestamp() AS t0 \gset
SELECT count(*) FROM (SELECT gnnvec_feedback('items_v', q, p) FROM (SELECT q, p FROM train LIMIT 300) t) f;
SELECT * FROM gnnvec_feedback_train('items_v', 300);
INSERT INTO results SELECT *, extract(epoch FROM clock_timestamp() - :'t0') FROM bench_eval('search', 'feedback');
SELECT gnnvec_model_reset('items_v');
-- trained
SELECT clock_timestamp() AS t0 \gset
SELECT * FROM gnnvec_train('items_v', 'SELECT q, p FROM train', epochs => 6);
INSERT INTO results SELECT *, extract(epoch FROM clock_timestamp() - :'t0') FROM bench_eval('search', 'trained');
SELECT config FROM gnnvec_model_info('items_v');
-- LoRA: the index's HnswScan adapter trained on the same pairs, then the
-- plain index scan with gnnvec.adapt (no reranking)
SET gnnvec.lora_alpha = 1;
SELECT clock_timestamp() AS t0 \gset
SELECT * FROM gnnvec_train('items_v', 'SELECT q, p FROM train', scope => 'HnswScan', epochs => 6,
	learning_rate => 0.05);
SET gnnvec.adapt = on;
SET enable_seqscan = off;
INSERT INTO results SELECT *, extract(epoch FROM clock_timestamp() - :'t0') FROM bench_eval('index', 'lora');
RESET enable_seqscan;
RESET gnnvec.adapt;
SELECT config FROM gnnvec_model_info('items_v') WHERE scope = 'HnswScan';
\copy results TO '$out/rerank_${set}.csv' CSV HEADER
SQL
	if [ "$set" = topics ]; then
		psql_q <<SQL
SET gnnvec.ef_search = 100;
SET gnnvec.rerank_candidates = 100;
-- latency at ef_search 100, k 10: plain and reranked scans alternate
SET enable_seqscan = off;
CREATE TABLE latency AS SELECT * FROM bench_latency_rounds(9);
\copy latency TO '$out/rerank_latency.csv' CSV HEADER
-- the wider model: hidden 128 instead of the default 64, trained the same
-- way; its held-out quality and its latency against the plain scan
SELECT gnnvec_model_reset('items_v');
SELECT clock_timestamp() AS t0 \gset
SELECT * FROM gnnvec_train('items_v', 'SELECT q, p FROM train', epochs => 6, hidden => 128);
CREATE TABLE wide AS SELECT *, extract(epoch FROM clock_timestamp() - :'t0') AS seconds
	FROM bench_eval('search', 'trained, hidden 128');
CREATE TABLE wide_latency AS SELECT * FROM bench_latency_rounds(9);
RESET gnnvec.rerank;
\copy wide TO '$out/rerank_wide.csv' CSV HEADER
\copy wide_latency TO '$out/rerank_wide_latency.csv' CSV HEADER
-- learning curve: for e = 1..6, a fresh model trained e epochs (no
-- validation split, so no epoch selection), then held-out recall.  (Calls
-- that continue a stored model are held near it by EWC.)
DO \$\$
DECLARE
	r record;
BEGIN
	FOR e IN 1 .. 6 LOOP
		PERFORM gnnvec_model_reset('items_v');
		SELECT * INTO r FROM gnnvec_train('items_v', 'SELECT q, p FROM train', epochs => e,
			validation_fraction => 0) ORDER BY epoch DESC LIMIT 1;
		INSERT INTO curve SELECT e, r.loss, recall_at_10 FROM bench_eval('search', 'curve');
	END LOOP;
END \$\$;
\copy curve TO '$out/rerank_curve.csv' CSV HEADER
SQL
	fi
done
