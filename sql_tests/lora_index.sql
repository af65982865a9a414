-- Per-index HnswScan adapters: gnnvec.adapt in gnnhnsw scans,
-- gnnvec_train(..., scope => 'HnswScan'), the model table, reset,
-- permissions and errors.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS gnnvec;

-- 400 distinct deterministic vectors in 8 dimensions, a cosine index
CREATE TABLE la (id int PRIMARY KEY, v vector(8));
INSERT INTO la SELECT i, (SELECT array_agg(sin(i * j * 0.37 + j)::real) FROM generate_series(1, 8) j)::vector
	FROM generate_series(1, 400) i;
CREATE INDEX la_v ON la USING gnnhnsw (v vector_cosine_ops) WITH (m = 8);
-- the setting exists once the library is loaded (the vector type loaded it)
SHOW gnnvec.adapt;
-- each query is a fixed linear distortion of its positive, of rank 2
-- (q1 = p1 + 2.5 p2, q3 = p3 - 2 p4): a rank-2 adapter can undo it
CREATE TABLE la_pairs (id int, q vector(8), p vector(8));
INSERT INTO la_pairs SELECT id, ARRAY[a[1] + 2.5 * a[2], a[2], a[3] - 2 * a[4], a[4],
		a[5], a[6], a[7], a[8]]::vector, v
	FROM (SELECT id, v, v::real[] AS a FROM la WHERE id % 2 = 0) s;
-- recall@10 of the pairs' positives through the index scan
CREATE FUNCTION pg_temp.pair_recall() RETURNS float LANGUAGE sql AS $$
	SELECT avg((SELECT count(*) FROM (SELECT id FROM la ORDER BY v <=> p.q LIMIT 10) t
		WHERE t.id = p.id))::float FROM la_pairs p $$;
CREATE FUNCTION pg_temp.top10(q vector) RETURNS int[] LANGUAGE sql AS $$
	SELECT array_agg(id) FROM (SELECT id FROM la ORDER BY v <=> q LIMIT 10) t $$;
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT id FROM la ORDER BY v <=> '[1,2,3,4,5,6,7,8]' LIMIT 10;

-- no adapter: gnnvec.adapt changes nothing
CREATE TEMP TABLE plain AS SELECT p.id, pg_temp.top10(p.q) AS top FROM la_pairs p;
SELECT pg_temp.pair_recall() AS recall_off \gset
SET gnnvec.adapt = on;
SELECT bool_and(pg_temp.top10(p.q) = plain.top) AS identity FROM la_pairs p JOIN plain USING (id);
RESET gnnvec.adapt;
SELECT count(*) FROM gnnvec_model_info('la_v');

-- training: a row per epoch; the validation recall is that of the adapted
-- search, and the best epoch beats the recall before training
SET gnnvec.lora_alpha = 1;
SELECT epoch, loss > 0 AND loss < 1e6 AS finite_loss, val_recall_at_10 BETWEEN 0 AND 1 AS recall_ok
FROM gnnvec_train('la_v', 'SELECT q, p FROM la_pairs', scope => 'hnswscan', epochs => 4,
	learning_rate => 0.05);
SELECT scope, kind, version, bytes,
	config LIKE '%"rank": 2, "alpha": 1,%"train_pairs": 160, "validation_pairs": 40,%' AS config_ok,
	(regexp_match(config, '"val_recall_at_10": ([0-9.]+)'))[1]::float >
	(regexp_match(config, '"start_recall_at_10": ([0-9.]+)'))[1]::float + 0.2 AS learned
FROM gnnvec_model_info('la_v');

-- off: the scan is as before; on: the adapted query finds the positives
SELECT pg_temp.pair_recall() = :recall_off AS off_unchanged;
SET gnnvec.adapt = on;
SELECT pg_temp.pair_recall() > :recall_off + 0.2 AS adapted_recall_better;
SELECT count(*) FILTER (WHERE pg_temp.top10(p.q) <> plain.top) > 50 AS queries_changed
FROM la_pairs p JOIN plain USING (id);
-- the ORDER BY value the executor returns stays the true distance to the
-- query as given (computed here from the arrays, not by the operator),
-- while the rows come in the adapted order, not by that distance
SELECT count(*) AS n, bool_and(abs(d - (1 - (SELECT sum(a * b) / sqrt(sum(a * a) * sum(b * b))
		FROM unnest(t.v::real[], q.q::real[]) u(a, b)))) < 1e-5) AS true_distance
FROM (SELECT q FROM la_pairs WHERE id = 2) q,
	LATERAL (SELECT v, v <=> q.q AS d FROM la ORDER BY v <=> q.q LIMIT 10) t;
SELECT count(*) FILTER (WHERE NOT sorted) > 0 AS adapted_order_is_not_distance_order
FROM (SELECT (SELECT bool_and(coalesce(prev <= d, true)) FROM
		(SELECT d, lag(d) OVER (ORDER BY ord) AS prev FROM
			(SELECT v <=> p.q AS d, row_number() OVER () AS ord FROM
				(SELECT v FROM la ORDER BY v <=> p.q LIMIT 10) s) r) w) AS sorted
	FROM la_pairs p) x;
-- a zero query (cosine: no direction) is no error
SELECT count(*) FROM (SELECT id FROM la ORDER BY v <=> '[0,0,0,0,0,0,0,0]' LIMIT 5) t;
RESET gnnvec.adapt;

-- a second training continues from the stored adapter: version 2; the
-- scope may be given by number (2 = HnswScan)
SELECT count(*) FROM gnnvec_train('la_v', 'SELECT q, p FROM la_pairs', scope => '2', epochs => 1,
	learning_rate => 0.05);
SELECT scope, version FROM gnnvec_model_info('la_v');

-- a training rolled back leaves no adapter, and this backend's cache sees it
SELECT gnnvec_model_reset('la_v', 'HnswScan');
BEGIN;
SELECT count(*) FROM gnnvec_train('la_v', 'SELECT q, p FROM la_pairs', scope => 'HnswScan',
	epochs => 2, learning_rate => 0.05);
SET LOCAL gnnvec.adapt = on;
SELECT pg_temp.pair_recall() > :recall_off AS adapted_in_transaction;
ROLLBACK;
SET gnnvec.adapt = on;
SELECT pg_temp.pair_recall() = :recall_off AS identity_after_rollback;
RESET gnnvec.adapt;

-- an L2 index trains and scans too
CREATE INDEX la_l2 ON la USING gnnhnsw (v vector_l2_ops) WITH (m = 8);
SELECT count(*) AS epochs, bool_and(loss > 0) AS finite_loss
FROM gnnvec_train('la_l2', 'SELECT q, p FROM la_pairs', scope => 'HnswScan', epochs => 2,
	learning_rate => 0.05);
SET gnnvec.adapt = on;
SELECT count(*) FROM (SELECT id FROM la ORDER BY v <-> '[1,2,3,4,5,6,7,8]' LIMIT 10) t;
RESET gnnvec.adapt;
SELECT gnnvec_model_reset('la_l2', 'hnswscan');
DROP INDEX la_l2;

-- self-supervised from the graph (pairs_sql NULL): a node's query, a
-- graph neighbour its positive
SELECT count(*) AS epochs, bool_and(loss > 0) AS finite_loss
FROM gnnvec_train('la_v', NULL, scope => 'HnswScan', epochs => 2, learning_rate => 0.05);
SELECT config LIKE '%"self_supervised": true%' AS self_supervised FROM gnnvec_model_info('la_v');
SELECT gnnvec_model_reset('la_v', 'HnswScan');

-- reset removes the adapter (kind lora) and the scan is plain again
SELECT count(*) FROM gnnvec_train('la_v', 'SELECT q, p FROM la_pairs', scope => 'HnswScan',
	epochs => 1, learning_rate => 0.05);
SELECT gnnvec_model_reset('la_v', 'HnswScan');
SELECT count(*) FROM gnnvec_model_info('la_v');
SET gnnvec.adapt = on;
SELECT bool_and(pg_temp.top10(p.q) = plain.top) AS identity FROM la_pairs p JOIN plain USING (id);
RESET gnnvec.adapt;

-- a damaged adapter is a clear error when a scan would use it, never a crash
SELECT count(*) FROM gnnvec_train('la_v', 'SELECT q, p FROM la_pairs', scope => 'HnswScan',
	epochs => 1, learning_rate => 0.05);
CREATE TEMP TABLE good AS SELECT model FROM gnnvec_models WHERE scope = 'HnswScan';
SET gnnvec.adapt = on;
UPDATE gnnvec_models SET model = '\x00010203' WHERE scope = 'HnswScan';
SELECT id FROM la ORDER BY v <=> '[1,2,3,4,5,6,7,8]' LIMIT 1;
UPDATE gnnvec_models SET model = overlay((SELECT model FROM good) placing '\x58' from 1)
	WHERE scope = 'HnswScan';
SELECT id FROM la ORDER BY v <=> '[1,2,3,4,5,6,7,8]' LIMIT 1;
UPDATE gnnvec_models SET model = substr((SELECT model FROM good), 1, 30) WHERE scope = 'HnswScan';
SELECT id FROM la ORDER BY v <=> '[1,2,3,4,5,6,7,8]' LIMIT 1;
UPDATE gnnvec_models SET model = overlay((SELECT model FROM good) placing '\x00000000' from 13)
	WHERE scope = 'HnswScan';
SELECT id FROM la ORDER BY v <=> '[1,2,3,4,5,6,7,8]' LIMIT 1;
UPDATE gnnvec_models SET model = overlay((SELECT model FROM good) placing '\x04000000' from 9)
	WHERE scope = 'HnswScan';
SELECT id FROM la ORDER BY v <=> '[1,2,3,4,5,6,7,8]' LIMIT 1;
UPDATE gnnvec_models SET model = overlay((SELECT model FROM good) placing '\x0000c07f' from 21)
	WHERE scope = 'HnswScan';
SELECT id FROM la ORDER BY v <=> '[1,2,3,4,5,6,7,8]' LIMIT 1;
-- repaired: the scan uses it again
UPDATE gnnvec_models SET model = (SELECT model FROM good) WHERE scope = 'HnswScan';
SELECT count(*) FROM (SELECT id FROM la ORDER BY v <=> '[1,2,3,4,5,6,7,8]' LIMIT 3) t;
RESET gnnvec.adapt;
SELECT gnnvec_model_reset('la_v', 'HnswScan');

-- errors: training options and scope
SELECT * FROM gnnvec_train('la_v', 'SELECT q, p FROM la_pairs', scope => 'HnswScans');
SELECT * FROM gnnvec_train('la_v', 'SELECT q, p FROM la_pairs', scope => 'HnswScan', epochs => 0);
SELECT * FROM gnnvec_train('la_v', 'SELECT q, p FROM la_pairs', scope => 'HnswScan',
	learning_rate => 2);
SELECT * FROM gnnvec_train('la_v', 'SELECT q FROM la_pairs', scope => 'HnswScan');
SELECT * FROM gnnvec_train('la_pkey', 'SELECT q, p FROM la_pairs', scope => 'HnswScan');

-- permissions: training needs ownership; a reader's scans use the adapter
SELECT count(*) FROM gnnvec_train('la_v', 'SELECT q, p FROM la_pairs', scope => 'HnswScan',
	epochs => 4, learning_rate => 0.05);
CREATE ROLE regress_lora_reader;
GRANT SELECT ON la, la_pairs TO regress_lora_reader;
SET ROLE regress_lora_reader;
SELECT * FROM gnnvec_train('la_v', 'SELECT q, p FROM la_pairs', scope => 'HnswScan');
SELECT gnnvec_model_reset('la_v', 'HnswScan');
SET gnnvec.adapt = on;
SELECT pg_temp.pair_recall() > :recall_off + 0.2 AS reader_adapted;
RESET gnnvec.adapt;
RESET ROLE;
SELECT gnnvec_model_reset('la_v');

DROP TABLE la, la_pairs;
DROP ROLE regress_lora_reader;
