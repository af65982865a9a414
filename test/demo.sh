#!/usr/bin/env bash
# make demo: a short, readable end-to-end run on the throwaway cluster that
# test/run.sh started (PGHOST/PGPORT point at it).
set -euo pipefail
createdb gnnvec_demo
psql -X -e -v ON_ERROR_STOP=1 -d gnnvec_demo <<'SQL'
\echo '-- 1. the extension and a table of 128-dimensional embeddings'
CREATE EXTENSION gnnvec;
CREATE TABLE items (id bigint PRIMARY KEY, category int, embedding vector(128));

\echo '-- 2. load 5000 clustered vectors (20 topics + noise), deterministically'
SELECT setseed(0.42);
CREATE TEMP TABLE topics AS
  SELECT t, array_agg(random() * 2 - 1 ORDER BY d) AS centre
  FROM generate_series(0, 19) t, generate_series(1, 128) d GROUP BY t;
\timing on
INSERT INTO items
  SELECT i, i % 20,
         (SELECT array_agg(c + (random() - 0.5) * 0.4 ORDER BY ord)
            FROM unnest(centre) WITH ORDINALITY u(c, ord))::vector(128)
  FROM generate_series(1, 5000) i JOIN topics ON t = i % 20;
\timing off
SELECT count(*) AS rows, max(vector_dims(embedding)) AS dims FROM items;

\echo '-- 3. the 5 nearest neighbours of item 42 by L2 (<->), cosine (<=>), inner product (<#>)'
\timing on
SELECT id, category, round((embedding <-> (SELECT embedding FROM items WHERE id = 42))::numeric, 4) AS l2
FROM items ORDER BY embedding <-> (SELECT embedding FROM items WHERE id = 42) LIMIT 5;
SELECT id, round((embedding <=> (SELECT embedding FROM items WHERE id = 42))::numeric, 4) AS cosine
FROM items ORDER BY embedding <=> (SELECT embedding FROM items WHERE id = 42) LIMIT 5;
SELECT id, round((embedding <#> (SELECT embedding FROM items WHERE id = 42))::numeric, 2) AS neg_inner_product
FROM items ORDER BY embedding <#> (SELECT embedding FROM items WHERE id = 42) LIMIT 5;
\timing off

\echo '-- 4. vector arithmetic and aggregates: the centroid of each category'
SELECT category, subvector(avg(embedding), 1, 4) AS centroid_head,
       round(vector_norm(avg(embedding))::numeric, 3) AS norm
FROM items GROUP BY category ORDER BY category LIMIT 5;

\echo '-- 5. how often is the nearest neighbour in the same category?'
SELECT round(avg(((SELECT n.category FROM items n WHERE n.id <> q.id
                    ORDER BY n.embedding <-> q.embedding LIMIT 1) = q.category)::int), 3) AS same_category
FROM (SELECT * FROM items WHERE id <= 100) q;

\echo '-- 6. a gnnhnsw index: the same query, now an index scan'
\timing on
CREATE INDEX items_embedding_idx ON items USING gnnhnsw (embedding vector_l2_ops) WITH (m = 16, ef_construction = 64);
\timing off
SELECT elements, levels, round(mean_degree::numeric, 1) AS mean_degree, pages FROM gnnvec_index_info('items_embedding_idx');
EXPLAIN (COSTS OFF)
SELECT id FROM items ORDER BY embedding <-> (SELECT embedding FROM items WHERE id = 42) LIMIT 5;
\timing on
SELECT id, category, round((embedding <-> (SELECT embedding FROM items WHERE id = 42))::numeric, 4) AS l2
FROM items ORDER BY embedding <-> (SELECT embedding FROM items WHERE id = 42) LIMIT 5;
\timing off

\echo '-- 7. recall@10 of the index against exact search, for 50 queries, at two ef_search settings'
SET enable_indexscan = off;   -- exact answers: a sequential scan and a sort
CREATE TEMP TABLE exact AS
  SELECT q.id AS qid, array(SELECT n.id FROM items n ORDER BY n.embedding <-> q.embedding LIMIT 10) AS ids
  FROM items q WHERE q.id % 100 = 0;
RESET enable_indexscan;
SET gnnvec.ef_search = 10;
SELECT 10 AS ef_search, round(avg(cardinality(ARRAY(SELECT unnest(e.ids) INTERSECT
         SELECT unnest(array(SELECT n.id FROM items n ORDER BY n.embedding <-> q.embedding LIMIT 10))))) / 10.0, 3) AS recall_at_10
FROM exact e JOIN items q ON q.id = e.qid;
SET gnnvec.ef_search = 40;
SELECT 40 AS ef_search, round(avg(cardinality(ARRAY(SELECT unnest(e.ids) INTERSECT
         SELECT unnest(array(SELECT n.id FROM items n ORDER BY n.embedding <-> q.embedding LIMIT 10))))) / 10.0, 3) AS recall_at_10
FROM exact e JOIN items q ON q.id = e.qid;
SELECT count(*) AS problems FROM gnnvec_index_check('items_embedding_idx');

\echo '-- 8. pgvector-compatible text and binary formats'
SELECT '[1,2.5,3]'::vector AS text_form, vector_send('[1,2.5,3]') AS binary_form;

\echo '-- 9. the same index built by CAGRA (kNN graph, pruned; level 0 given long edges): build time and recall side by side'
\timing on
CREATE INDEX items_cagra_idx ON items USING gnnhnsw (embedding vector_l2_ops)
  WITH (m = 16, build_method = 'cagra', device = 'cpu');
\timing off
DROP INDEX items_embedding_idx;   -- so that the scans below use the CAGRA-built graph
SET gnnvec.ef_search = 40;
SELECT 'cagra' AS build, 40 AS ef_search, round(avg(cardinality(ARRAY(SELECT unnest(e.ids) INTERSECT
         SELECT unnest(array(SELECT n.id FROM items n ORDER BY n.embedding <-> q.embedding LIMIT 10))))) / 10.0, 3) AS recall_at_10
FROM exact e JOIN items q ON q.id = e.qid;
SELECT count(*) AS problems FROM gnnvec_index_check('items_cagra_idx');

\echo '-- 10. search that learns: 30 topics, 1200 noisy items; nearest neighbours often come from another topic'
SELECT setseed(0.42);
CREATE TABLE normal AS
  SELECT i, j, sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()) AS z
  FROM generate_series(0, 1689) i, generate_series(1, 16) j;
CREATE TABLE centre AS SELECT i AS topic, array_agg(z ORDER BY j) AS c FROM normal WHERE i < 30 GROUP BY i;
CREATE TABLE view AS
  SELECT n.i - 30 AS id, (n.i - 30) % 30 AS topic, array_agg((c.c[n.j] + n.z)::real ORDER BY n.j)::vector(16) AS v
  FROM normal n JOIN centre c ON c.topic = (n.i - 30) % 30 WHERE n.i >= 30 GROUP BY n.i;
CREATE TABLE docs (id int PRIMARY KEY, topic int, v vector(16));
INSERT INTO docs SELECT id, topic, v FROM view WHERE id < 1200;
CREATE INDEX docs_v ON docs USING gnnhnsw (v vector_l2_ops) WITH (m = 8);
-- clicks: for 400 queries, an item of the query's topic among the 100 nearest
CREATE TABLE clicks AS SELECT * FROM (
  SELECT q.v AS q, (SELECT s.v FROM (SELECT d.v, d.topic FROM docs d ORDER BY d.v <-> q.v LIMIT 100) s
                    WHERE s.topic = q.topic ORDER BY random() LIMIT 1) AS p
  FROM view q WHERE q.id BETWEEN 1200 AND 1599) t WHERE p IS NOT NULL;
CREATE TABLE heldout AS SELECT id, topic, v FROM view WHERE id >= 1600;   -- 60 queries never trained on
CREATE FUNCTION hits(q vector, t int) RETURNS bigint LANGUAGE sql AS $$
  SELECT count(*) FROM (SELECT d.topic FROM docs d ORDER BY d.v <-> q LIMIT 10) s WHERE s.topic = t $$;
CREATE FUNCTION p_at_10() RETURNS numeric LANGUAGE sql AS $$
  SELECT round(avg((SELECT count(*) FROM (SELECT d.topic FROM docs d ORDER BY d.v <-> h.v LIMIT 10) t
                    WHERE t.topic = h.topic) / 10.0), 3) FROM heldout h $$;
SET gnnvec.ef_search = 100;
SET enable_seqscan = off;
SELECT p_at_10() AS p10_plain_index_scan;
CREATE TEMP TABLE plain_hits AS SELECT id, hits(v, topic) AS hits FROM heldout;
\echo '-- the held-out query the plain scan serves worst: how many of its top 10 share its topic?'
SELECT h.id AS worst FROM heldout h
ORDER BY (SELECT count(*) FROM (SELECT d.topic FROM docs d ORDER BY d.v <-> h.v LIMIT 10) t WHERE t.topic = h.topic), h.id
LIMIT 1 \gset
SELECT :worst AS query, count(*) FILTER (WHERE d.topic = h.topic) AS same_topic_in_top10
FROM heldout h, LATERAL (SELECT topic FROM docs d ORDER BY d.v <-> h.v LIMIT 10) d WHERE h.id = :worst;
\echo '-- train the Rerank GNN from the clicks (one NOTICE per epoch), then rerank the scans'
SET client_min_messages = notice;
\timing on
SELECT epoch, round(loss::numeric, 3) AS loss, round(val_recall_at_10::numeric, 3) AS val_recall_at_10
FROM gnnvec_train('docs_v', 'SELECT q, p FROM clicks', epochs => 3, hidden => 16, validation_fraction => 0.5);
\timing off
SET gnnvec.rerank = on;
SELECT p_at_10() AS p10_reranked_scan;
SELECT count(*) FILTER (WHERE hits(h.v, h.topic) > p.hits) AS queries_better,
       count(*) FILTER (WHERE hits(h.v, h.topic) < p.hits) AS queries_worse
FROM heldout h JOIN plain_hits p USING (id);
SELECT :worst AS query, count(*) FILTER (WHERE d.topic = h.topic) AS same_topic_in_top10
FROM heldout h, LATERAL (SELECT topic FROM docs d ORDER BY d.v <-> h.v LIMIT 10) d WHERE h.id = :worst;
\echo '-- latency: the 60 held-out queries, reranked then plain'
\timing on
SELECT count(*) FROM heldout h, LATERAL (SELECT id FROM docs d ORDER BY d.v <-> h.v LIMIT 10) t;
SET gnnvec.rerank = off;
SELECT count(*) FROM heldout h, LATERAL (SELECT id FROM docs d ORDER BY d.v <-> h.v LIMIT 10) t;
\timing off

\echo '-- 11. what this backend caches for its scans, and a last check of both indexes'
SELECT index, elements, pg_size_pretty(bytes) AS memory FROM gnnvec_scan_cache();
SELECT (SELECT count(*) FROM gnnvec_index_check('items_cagra_idx')) + (SELECT count(*) FROM gnnvec_index_check('docs_v')) AS problems;
SQL
