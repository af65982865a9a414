#!/usr/bin/env bash
# make demo: the story of gnnvec in a few minutes, on the throwaway cluster
# that test/run.sh started (PGHOST/PGPORT point at it).  psql echoes every
# statement, so each step can be copied; every number printed is measured in
# this run.
set -euo pipefail
createdb gnnvec_demo
psql -X -q -e -v ON_ERROR_STOP=1 -d gnnvec_demo <<'SQL'
\pset footer off
\echo
\echo '=== 1. Data where the nearest neighbours are not what users want ==='
\echo '200 topics in 64 dimensions; each document is its topic''s centre plus noise'
\echo '(sigma 1.5), so many of a query''s nearest documents belong to other topics.'
CREATE EXTENSION gnnvec;
SELECT setseed(0.42);
CREATE FUNCTION gauss() RETURNS float8 LANGUAGE sql VOLATILE AS   -- Box-Muller: N(0, 1)
  $$ SELECT sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()) $$;
CREATE TABLE topic AS
  SELECT t AS topic, array_agg(gauss() ORDER BY d) AS centre
  FROM generate_series(0, 199) t, generate_series(1, 64) d GROUP BY t;
-- 10,000 documents, 1,000 logged queries (for clicks), 200 held-out queries
CREATE TABLE sample AS
  SELECT i AS id, i % 200 AS topic,
         (SELECT array_agg(c + 1.5 * gauss() ORDER BY n) FROM unnest(centre) WITH ORDINALITY u(c, n))::vector(64) AS v
  FROM generate_series(1, 11200) i JOIN topic ON topic.topic = i % 200;
CREATE TABLE docs (id int PRIMARY KEY, topic int, v vector(64));
INSERT INTO docs SELECT * FROM sample WHERE id <= 10000;
CREATE TABLE heldout AS SELECT * FROM sample WHERE id > 11000;
CREATE TABLE summary (step int, measure text, value text, n serial);   -- the closing table

\echo
\echo '--- the same documents indexed twice: an HNSW build and a CAGRA build ---'
CREATE TABLE docs_cagra (LIKE docs INCLUDING ALL);   -- a copy, so both indexes can be queried
INSERT INTO docs_cagra SELECT * FROM docs;
SELECT clock_timestamp() AS t0 \gset
CREATE INDEX docs_hnsw ON docs USING gnnhnsw (v vector_l2_ops)
  WITH (m = 16, ef_construction = 64, build_method = 'hnsw');
INSERT INTO summary SELECT 1, 'build s, hnsw', round(extract(epoch FROM clock_timestamp() - :'t0'::timestamptz), 2)::text;
SELECT clock_timestamp() AS t0 \gset
CREATE INDEX docs_cagra_v ON docs_cagra USING gnnhnsw (v vector_l2_ops)
  WITH (m = 16, build_method = 'cagra', device = 'cpu');
INSERT INTO summary SELECT 1, 'build s, cagra', round(extract(epoch FROM clock_timestamp() - :'t0'::timestamptz), 2)::text;
-- recall@10 against exact search (a sequential scan and a sort) for the 200 held-out queries
SET enable_indexscan = off;
CREATE TABLE exact AS
  SELECT h.id, array(SELECT d.id FROM docs d ORDER BY d.v <-> h.v LIMIT 10) AS top10 FROM heldout h;
RESET enable_indexscan;
SET enable_seqscan = off;
CREATE FUNCTION recall_at_10(ef int, build text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  PERFORM set_config('gnnvec.ef_search', ef::text, false);
  RETURN (SELECT round(avg(cardinality(array(SELECT unnest(e.top10) INTERSECT SELECT unnest(f.ids)))) / 10.0, 3)
          FROM exact e JOIN heldout h USING (id),
               LATERAL (SELECT CASE build
                   WHEN 'hnsw' THEN array(SELECT d.id FROM docs d ORDER BY d.v <-> h.v LIMIT 10)
                   ELSE array(SELECT d.id FROM docs_cagra d ORDER BY d.v <-> h.v LIMIT 10) END) f(ids));
END $$;
INSERT INTO summary
SELECT 1, format('recall@10 at ef_search %s, hnsw / cagra', ef), recall_at_10(ef, 'hnsw') || ' / ' || recall_at_10(ef, 'cagra')
FROM unnest(array[10, 40, 100]) ef;
SELECT measure, value FROM summary WHERE step = 1 ORDER BY n;

\echo
\echo '=== 2. One query whose top 10 is mostly wrong ==='
SET gnnvec.ef_search = 100;   -- from here on; reranked scans take 100 candidates too
CREATE FUNCTION hits(q vector, t int) RETURNS int LANGUAGE sql AS   -- top-10 documents of topic t
  $$ SELECT count(*)::int FROM (SELECT topic FROM docs ORDER BY v <-> q LIMIT 10) s WHERE topic = t $$;
EXPLAIN (COSTS OFF) SELECT id FROM docs ORDER BY v <-> (SELECT v FROM heldout WHERE id = 11001) LIMIT 10;
CREATE TABLE plain AS SELECT id, hits(v, topic) AS hits FROM heldout;   -- the plain scan, per query
INSERT INTO summary SELECT 2, 'held-out P@10, plain index scan', round(avg(hits) / 10.0, 3) FROM plain;
\echo '--- the held-out query the plain index scan serves worst ---'
SELECT id AS query, topic AS query_topic, hits AS query_hits FROM heldout JOIN plain USING (id)
ORDER BY hits, id LIMIT 1 \gset
\echo 'query' :query 'of topic' :query_topic ':' :query_hits 'of its 10 nearest documents share its topic'
SELECT d.rank, d.id, d.topic, CASE WHEN d.topic = q.topic THEN 'yes' ELSE '' END AS same_topic,
       round((d.v <-> q.v)::numeric, 2) AS l2
FROM (SELECT v, topic FROM heldout WHERE id = :query) q,
     LATERAL (SELECT row_number() OVER () AS rank, * FROM
              (SELECT id, topic, v FROM docs ORDER BY v <-> q.v LIMIT 10) s) d ORDER BY d.rank;
SELECT value AS "held-out P@10, plain index scan" FROM summary WHERE step = 2;
SELECT count(*) FILTER (WHERE hits <= 3) AS "queries with at most 3 of 10 right", count(*) AS queries FROM plain;

\echo
\echo '=== 3. Learning from clicks: a GNN reranker ==='
\echo 'The clicks: for each of the 1,000 logged queries, one document of its topic among'
\echo 'the 100 the index returned (the user looked past the first page).'
CREATE TABLE clicks AS
  SELECT q.v AS query, c.v AS clicked
  FROM sample q, LATERAL (SELECT s.v FROM (SELECT v, topic FROM docs ORDER BY v <-> q.v LIMIT 100) s
                          WHERE s.topic = q.topic ORDER BY random() LIMIT 1) c
  WHERE q.id BETWEEN 10001 AND 11000;
SELECT count(*) AS clicks FROM clicks;
\echo 'Training: one NOTICE per epoch (loss, hit rate at 10 on the validation clicks).'
SELECT clock_timestamp() AS t0 \gset
SELECT epoch, round(loss::numeric, 3) AS loss, round(val_recall_at_10::numeric, 3) AS val_hit_rate_at_10
FROM gnnvec_train('docs_hnsw', 'SELECT query, clicked FROM clicks', epochs => 3, hidden => 32);
INSERT INTO summary SELECT 3, 'training s (1,000 clicks, 3 epochs)', round(extract(epoch FROM clock_timestamp() - :'t0'::timestamptz), 1)::text;
SELECT scope, kind, version, pg_size_pretty(bytes::bigint) AS size FROM gnnvec_model_info('docs_hnsw');

SET gnnvec.rerank = on;   -- ORDER BY v <-> q LIMIT k now returns the model's order
\echo '--- the same query, reranked: rows come in the model''s order; l2 stays the true distance ---'
SELECT d.rank, d.id, d.topic, CASE WHEN d.topic = q.topic THEN 'yes' ELSE '' END AS same_topic,
       round((d.v <-> q.v)::numeric, 2) AS l2
FROM (SELECT v, topic FROM heldout WHERE id = :query) q,
     LATERAL (SELECT row_number() OVER () AS rank, * FROM
              (SELECT id, topic, v FROM docs ORDER BY v <-> q.v LIMIT 10) s) d ORDER BY d.rank;
\echo '--- all 200 held-out queries (never trained on) ---'
CREATE TABLE reranked AS SELECT id, hits(v, topic) AS hits FROM heldout;
INSERT INTO summary
SELECT 3, 'held-out P@10, reranked', round(avg(r.hits) / 10.0, 3)::text FROM reranked r
UNION ALL
SELECT 3, format('query %s: same topic in top 10, plain / reranked', :query), format('%s / %s', p.hits, r.hits)
FROM reranked r JOIN plain p USING (id) WHERE id = :query
UNION ALL
SELECT 3, 'held-out queries better / worse / same', format('%s / %s / %s',
       count(*) FILTER (WHERE r.hits > p.hits), count(*) FILTER (WHERE r.hits < p.hits),
       count(*) FILTER (WHERE r.hits = p.hits))
FROM reranked r JOIN plain p USING (id);
SELECT measure, value FROM summary WHERE step IN (2, 3) ORDER BY n;

\echo '--- latency: ms per query over the 200 held-out queries, plain and reranked alternating (ef_search 100) ---'
CREATE FUNCTION ms_per_query(rerank bool) RETURNS numeric LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz;
BEGIN
  PERFORM set_config('gnnvec.rerank', rerank::text, false);
  t0 := clock_timestamp();
  PERFORM count(*) FROM heldout h, LATERAL (SELECT id FROM docs d ORDER BY d.v <-> h.v LIMIT 10) t;
  RETURN round(extract(epoch FROM clock_timestamp() - t0) * 1000 / (SELECT count(*) FROM heldout), 3);
END $$;
SELECT ms_per_query(true) AS "warm-up (fills the reranker's cache)";
CREATE TABLE latency AS
  SELECT pass, ms_per_query(false) AS plain_ms, ms_per_query(true) AS reranked_ms FROM generate_series(1, 3) pass;
SELECT pass, plain_ms, reranked_ms, round(reranked_ms / plain_ms, 2) AS ratio FROM latency ORDER BY pass;
INSERT INTO summary
SELECT 3, 'ms per query, plain / reranked (median of 3 passes)', format('%s / %s',
       percentile_disc(0.5) WITHIN GROUP (ORDER BY plain_ms), percentile_disc(0.5) WITHIN GROUP (ORDER BY reranked_ms))
FROM latency;

\echo
\echo '=== 4. A query adapter for the index scan (MicroLoRA), and trajectories ==='
\echo 'An HnswScan adapter maps each query before the graph search: y = x + alpha (x A) B.'
SET gnnvec.rerank = off;
SET gnnvec.lora_alpha = 1;
SELECT epoch, round(loss::numeric, 3) AS loss, round(val_recall_at_10::numeric, 3) AS val_hit_rate_at_10
FROM gnnvec_train('docs_hnsw', 'SELECT query, clicked FROM clicks', scope => 'HnswScan',
                  epochs => 3, learning_rate => 0.05);
\echo 'Training keeps the best epoch on the validation clicks; epoch 0 is the adapter as it was'
\echo 'before (here: none, the identity).  The stored config has both validation recalls:'
INSERT INTO summary
SELECT 4, 'HnswScan adapter: validation recall@10 before / kept',
       (regexp_match(config, '"start_recall_at_10": ([0-9.]+)'))[1] || ' / ' ||
       (regexp_match(config, '"val_recall_at_10": ([0-9.]+)'))[1]
FROM gnnvec_model_info('docs_hnsw') WHERE scope = 'HnswScan';
SET gnnvec.adapt = on;   -- scans of docs_hnsw search with the adapted query
INSERT INTO summary
SELECT 4, 'held-out P@10, adapted', round(avg(hits(v, topic)) / 10.0, 3) FROM heldout;
SET gnnvec.rerank = on;
INSERT INTO summary
SELECT 4, 'held-out P@10, adapted and reranked', round(avg(hits(v, topic)) / 10.0, 3) FROM heldout;
SELECT measure, value FROM summary WHERE step = 4 ORDER BY n;
SET gnnvec.adapt = off;
SET gnnvec.rerank = off;

\echo '--- trajectories: per-operator time of 20 held-out queries, recorded by the executor hook ---'
SET gnnvec.record_trajectories = on;   -- superuser
DO $$
DECLARE q vector;
BEGIN
  FOR q IN SELECT v FROM heldout WHERE id <= 11020 LOOP
    PERFORM id FROM docs ORDER BY v <-> q LIMIT 10;
  END LOOP;
END $$;
SET gnnvec.record_trajectories = off;
SELECT id, scope, round(execution_ms::numeric, 3) AS ms, round(baseline_ms::numeric, 3) AS baseline_ms,
       round(improvement::numeric, 3) AS improvement, rows, subvector(embedding, 1, 3) AS query_head
FROM gnnvec_trajectories() ORDER BY id LIMIT 5;
SELECT total, round(mean_improvement::numeric, 3) AS mean_improvement,
       round(success_rate::numeric, 3) AS success_rate, count_by_operator
FROM gnnvec_trajectory_stats(0.5);
INSERT INTO summary SELECT 4, 'trajectory records (nodes of 20 plans + the loop''s scan)', total::text
FROM gnnvec_trajectory_stats(0.5);

\echo '--- the shared per-operator adapter bank: rewarded with the recorded HnswScan improvements ---'
\echo 'gnnvec_lora_* adapt this bank (one adapter per operator type, for every index); index'
\echo 'scans read only their own index''s adapter above.'
SELECT count(gnnvec_lora_reward('HnswScan', improvement)) AS rewards
FROM (SELECT gnnvec_lora_forward('HnswScan', embedding), improvement
      FROM gnnvec_trajectories() WHERE scope = 'HnswScan' ORDER BY id) t;
SELECT name, category, dim, rank, forward_count, adapt_count, round(delta_norm::numeric, 4) AS delta_norm
FROM gnnvec_lora_stats() WHERE forward_count > 0 OR name = 'HnswScan';

\echo
\echo '=== 5. Both indexes checked, and the summary ==='
INSERT INTO summary
SELECT 5, 'gnnvec_index_check problems, ' || i, count(c.*)::text
FROM unnest(array['docs_hnsw', 'docs_cagra_v']) i LEFT JOIN LATERAL gnnvec_index_check(i::regclass) c ON true
GROUP BY i;
SELECT step, measure, value FROM summary ORDER BY n;
SQL
