-- gnnhnsw iterative scans: a scan resumes its search while the executor
-- asks for rows, and ends with every row it can reach.
CREATE EXTENSION IF NOT EXISTS gnnvec;
SET client_min_messages = warning;
SET enable_seqscan = off;

-- three rows, ef_search 1: one row without iterative scans, all three with
CREATE TABLE hi3 (id int, v vector(2));
INSERT INTO hi3 VALUES (1, '[0,0]'), (2, '[1,0]'), (3, '[5,5]');
CREATE INDEX ON hi3 USING gnnhnsw (v vector_l2_ops);
SET gnnvec.ef_search = 1;
EXPLAIN (COSTS OFF) SELECT id FROM hi3 ORDER BY v <-> '[0,0]' LIMIT 5;
SELECT id FROM hi3 ORDER BY v <-> '[0,0]' LIMIT 5;
SET gnnvec.iterative_scan = relaxed_order;
SELECT id FROM hi3 ORDER BY v <-> '[0,0]' LIMIT 5;
SET gnnvec.iterative_scan = strict_order;
SELECT id FROM hi3 ORDER BY v <-> '[0,0]' LIMIT 5;
RESET gnnvec.iterative_scan;
RESET gnnvec.ef_search;
DROP TABLE hi3;

-- 3000 rows; the WHERE clause passes 1 row in 50 (60 rows)
SELECT setseed(0.25);
CREATE TABLE hif (id int, v vector(8));
INSERT INTO hif SELECT i, (SELECT array_agg(random()::real) FROM generate_series(1, 8) WHERE i > 0)::vector
	FROM generate_series(1, 3000) i;
CREATE INDEX hif_idx ON hif USING gnnhnsw (v vector_l2_ops);
SET gnnvec.ef_search = 20;
-- without iterative scans the 20 elements found hold few of those rows
SELECT count(*) < 10 AS too_few FROM
	(SELECT id FROM hif WHERE id % 50 = 0 ORDER BY v <-> '[0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5]' LIMIT 10) s;
-- with them the scan goes on until it has 10, in order under strict_order
SET gnnvec.iterative_scan = relaxed_order;
SELECT count(*), bool_and(id % 50 = 0) FROM
	(SELECT id FROM hif WHERE id % 50 = 0 ORDER BY v <-> '[0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5]' LIMIT 10) s;
SET gnnvec.iterative_scan = strict_order;
SELECT count(*), bool_and(id % 50 = 0), bool_and(d >= prev) AS ordered FROM
	(SELECT id, d, lag(d, 1, 0.0::float8) OVER (ORDER BY n) AS prev FROM
		(SELECT id, v <-> '[0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5]' AS d, row_number() OVER () AS n
		 FROM (SELECT id, v FROM hif WHERE id % 50 = 0
			   ORDER BY v <-> '[0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5]' LIMIT 10) q) r) s;
-- the nearest of the filtered rows is found, as an exact search finds it
SET gnnvec.iterative_scan = relaxed_order;
SELECT (SELECT id FROM hif WHERE id % 50 = 0 ORDER BY v <-> '[0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5]' LIMIT 1) =
	(SELECT id FROM hif WHERE id % 50 = 0 ORDER BY v::real[]::vector <-> '[0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5]' LIMIT 1) AS nearest;
-- a filter that passes every row sees every row, each once
SELECT count(*), count(DISTINCT id) FROM
	(SELECT id FROM hif WHERE id > 0 ORDER BY v <-> '[0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5]' LIMIT 5000) s;
-- gnnvec.max_scan_tuples caps what a scan reads
SET gnnvec.max_scan_tuples = 100;
SELECT count(*) < 3000 AS capped FROM
	(SELECT id FROM hif WHERE id > 0 ORDER BY v <-> '[0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5]' LIMIT 5000) s;
RESET gnnvec.max_scan_tuples;
-- deleted rows are not returned, the rest still are
DELETE FROM hif WHERE id % 3 = 0;
VACUUM hif;
SELECT count(*), count(*) FILTER (WHERE id % 3 = 0) AS deleted FROM
	(SELECT id FROM hif WHERE id > 0 ORDER BY v <-> '[0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5]' LIMIT 5000) s;
RESET gnnvec.iterative_scan;
RESET gnnvec.ef_search;
RESET enable_seqscan;

-- scans need an MVCC snapshot (the order they return depends on the graph
-- as it is now); the paths that would scan with another, CLUSTER
-- (SnapshotAny) and exclusion constraints (a dirty snapshot), refuse the
-- index before any scan starts
CLUSTER hif USING hif_idx;
ALTER TABLE hif ADD EXCLUDE USING gnnhnsw (v WITH <->);
DROP TABLE hif;
