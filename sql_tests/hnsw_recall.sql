-- gnnhnsw: recall@10 against exact search on 10,000 vectors (half uniform,
-- half in 20 clusters) for every operator class, for the in-memory build
-- and for an index filled by inserts; iterative scans under a 1% filter.
CREATE EXTENSION IF NOT EXISTS gnnvec;
SET client_min_messages = warning;
SELECT setseed(0.25);

CREATE TABLE hr (id int PRIMARY KEY, cat int, v vector(16));
CREATE TEMP TABLE hr_centres AS
	SELECT i AS cid, (SELECT array_agg((random() * 8 - 4)::real) FROM generate_series(1, 16) WHERE i > 0) AS c
	FROM generate_series(1, 20) i;
INSERT INTO hr
	SELECT i, i % 100, (SELECT array_agg((random() * 2 - 1)::real) FROM generate_series(1, 16) WHERE i > 0)::vector
	FROM generate_series(1, 5000) i;
INSERT INTO hr
	SELECT i, i % 100, (SELECT array_agg(c[j] + (random() - 0.5)::real) FROM generate_series(1, 16) j)::vector
	FROM generate_series(5001, 10000) i JOIN hr_centres ON cid = i % 20 + 1;
CREATE TEMP TABLE hr_q AS
	SELECT row_number() OVER () AS qid, (SELECT array_agg(x + (random() * 0.2 - 0.1)::real) FROM unnest(v::real[]) x)::vector AS q
	FROM (SELECT v FROM hr WHERE id % 200 = 7) s;
SELECT count(*) AS queries FROM hr_q;

-- recall@10 of the index for one operator, against exact results
CREATE FUNCTION hr_recall(op text) RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
	r float8;
BEGIN
	SET LOCAL enable_indexscan = off;
	SET LOCAL enable_bitmapscan = off;
	EXECUTE format('CREATE TEMP TABLE hr_truth AS SELECT qid, id FROM hr_q, LATERAL (SELECT id FROM hr ORDER BY v %s q, id LIMIT 10) s', op);
	SET LOCAL enable_indexscan = on;
	SET LOCAL enable_seqscan = off;
	EXECUTE format('CREATE TEMP TABLE hr_approx AS SELECT qid, id FROM hr_q, LATERAL (SELECT id FROM hr ORDER BY v %s q LIMIT 10) s', op);
	SELECT count(*)::float8 / (SELECT count(*) FROM hr_truth) INTO r
		FROM hr_truth JOIN hr_approx USING (qid, id);
	DROP TABLE hr_truth, hr_approx;
	RETURN r;
END $$;

-- the index is used for ORDER BY ... LIMIT
CREATE INDEX hr_l2 ON hr USING gnnhnsw (v vector_l2_ops);
EXPLAIN (COSTS OFF) SELECT id FROM hr ORDER BY v <-> '[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]' LIMIT 10;
SELECT hr_recall('<->') >= 0.95 AS l2_recall_ok;
SELECT count(*) AS l2_problems FROM gnnvec_index_check('hr_l2');
DROP INDEX hr_l2;

-- Inner product over vectors of very different norms is the hard case for
-- any HNSW: hnswlib (same m, ef_construction, ef) reaches 0.70 on this data.
-- a parallel build (two workers and the leader) and an on-disk build
-- (maintenance_work_mem too small) reach the same recall.  PostgreSQL's
-- own message says "serially" as it plans workers only for btree; gnnhnsw
-- asks for them itself.
ALTER TABLE hr SET (parallel_workers = 2);
SET max_parallel_maintenance_workers = 2;
SET client_min_messages = debug1;
CREATE INDEX hr_l2_par ON hr USING gnnhnsw (v vector_l2_ops);
SET client_min_messages = warning;
SELECT hr_recall('<->') >= 0.95 AS parallel_l2_recall_ok;
SELECT count(*) AS parallel_problems FROM gnnvec_index_check('hr_l2_par');
SELECT elements, heap_tids FROM gnnvec_index_info('hr_l2_par');
DROP INDEX hr_l2_par;
-- a small ef_construction makes the search heaps grow while rows are built
CREATE INDEX hr_l2_par_small ON hr USING gnnhnsw (v vector_l2_ops) WITH (m = 4, ef_construction = 8);
SELECT count(*) AS parallel_small_problems FROM gnnvec_index_check('hr_l2_par_small');
DROP INDEX hr_l2_par_small;
ALTER TABLE hr RESET (parallel_workers);
RESET max_parallel_maintenance_workers;
SET maintenance_work_mem = '1MB';
CREATE INDEX hr_l2_disk ON hr USING gnnhnsw (v vector_l2_ops);
RESET maintenance_work_mem;
SELECT hr_recall('<->') >= 0.95 AS on_disk_l2_recall_ok;
SELECT count(*) AS on_disk_problems FROM gnnvec_index_check('hr_l2_disk');
DROP INDEX hr_l2_disk;

CREATE INDEX hr_ip ON hr USING gnnhnsw (v vector_ip_ops);
SELECT hr_recall('<#>') >= 0.6 AS ip_recall_ok;
SET gnnvec.ef_search = 200;
SELECT hr_recall('<#>') >= 0.7 AS ip_recall_ef200_ok;
RESET gnnvec.ef_search;
SELECT count(*) AS ip_problems FROM gnnvec_index_check('hr_ip');
DROP INDEX hr_ip;

CREATE INDEX hr_cos ON hr USING gnnhnsw (v vector_cosine_ops);
SELECT hr_recall('<=>') >= 0.95 AS cosine_recall_ok;
SELECT count(*) AS cosine_problems FROM gnnvec_index_check('hr_cos');
DROP INDEX hr_cos;

CREATE INDEX hr_l1 ON hr USING gnnhnsw (v vector_l1_ops) WITH (m = 12, ef_construction = 48);
SELECT hr_recall('<+>') >= 0.9 AS l1_recall_ok;
SELECT count(*) AS l1_problems FROM gnnvec_index_check('hr_l1');
DROP INDEX hr_l1;

-- an index filled row by row by inserts (the on-disk insert path)
CREATE TABLE hr_copy (LIKE hr);
INSERT INTO hr_copy SELECT * FROM hr WHERE id <= 3000 OR id > 8000;
CREATE INDEX hr_ins ON hr USING gnnhnsw (v vector_l2_ops);
TRUNCATE hr;
INSERT INTO hr SELECT * FROM hr_copy;
SELECT hr_recall('<->') >= 0.95 AS inserted_recall_ok;
SELECT count(*) AS inserted_problems FROM gnnvec_index_check('hr_ins');
SELECT elements, heap_tids, levels > 1 AS multilevel, mean_degree BETWEEN 4 AND 32 AS degree_ok
	FROM gnnvec_index_info('hr_ins');

-- iterative scans: a 1%-selective filter still returns LIMIT rows
SET enable_seqscan = off;
SET gnnvec.ef_search = 20;
SELECT count(*) < 10 AS fewer_rows_without_iterative_scan FROM (SELECT id FROM hr WHERE cat = 3 ORDER BY v <-> (SELECT q FROM hr_q WHERE qid = 1) LIMIT 10) s;
SET gnnvec.iterative_scan = relaxed_order;
SELECT count(*) AS rows_relaxed FROM (SELECT id FROM hr WHERE cat = 3 ORDER BY v <-> (SELECT q FROM hr_q WHERE qid = 1) LIMIT 10) s;
SET gnnvec.iterative_scan = strict_order;
CREATE TEMP TABLE hr_strict AS
	SELECT row_number() OVER () AS rn, d FROM (
		SELECT v <-> (SELECT q FROM hr_q WHERE qid = 1) AS d FROM hr WHERE cat = 3
		ORDER BY v <-> (SELECT q FROM hr_q WHERE qid = 1) LIMIT 10) s;
SELECT count(*) AS rows_strict,
	bool_and(d >= coalesce((SELECT d FROM hr_strict p WHERE p.rn = s.rn - 1), 0)) AS strictly_ordered
	FROM hr_strict s;
-- max_scan_tuples bounds the work: with a tiny budget fewer rows come back
SET gnnvec.max_scan_tuples = 50;
SELECT count(*) < 10 AS bounded FROM (SELECT id FROM hr WHERE cat = 3 ORDER BY v <-> (SELECT q FROM hr_q WHERE qid = 1) LIMIT 10) s;
RESET gnnvec.max_scan_tuples;
RESET gnnvec.iterative_scan;
RESET gnnvec.ef_search;
RESET enable_seqscan;

DROP TABLE hr, hr_copy;
DROP FUNCTION hr_recall(text);
