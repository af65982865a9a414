#!/usr/bin/env bash
# make demo: a short, readable end-to-end run on the throwaway cluster that
# test/run.sh started (PGHOST/PGPORT point at it).
set -euo pipefail
createdb gnnvec_demo
psql -X -v ON_ERROR_STOP=1 -d gnnvec_demo <<'SQL'
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
SQL
