-- gnnhnsw: VACUUM removes dead rows, repairs the graph, reuses the space.
CREATE EXTENSION IF NOT EXISTS gnnvec;
SET client_min_messages = warning;
SELECT setseed(0.75);

CREATE TABLE hv (id int PRIMARY KEY, v vector(8)) WITH (autovacuum_enabled = false);
INSERT INTO hv SELECT i, (SELECT array_agg((random() * 2 - 1)::real) FROM generate_series(1, 8) WHERE i > 0)::vector
	FROM generate_series(1, 3000) i;
CREATE TEMP TABLE hv_keep AS SELECT * FROM hv;
CREATE INDEX hv_idx ON hv USING gnnhnsw (v) WITH (m = 8, ef_construction = 32);
CREATE TEMP TABLE hv_size AS SELECT pages AS before FROM gnnvec_index_info('hv_idx');

CREATE FUNCTION hv_recall() RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE
	r float8;
BEGIN
	SET LOCAL enable_indexscan = off;
	CREATE TEMP TABLE hv_truth AS SELECT q.id AS qid, s.id FROM (SELECT id, v FROM hv WHERE id % 100 = 1) q,
		LATERAL (SELECT id FROM hv ORDER BY v <-> q.v, id LIMIT 10) s;
	SET LOCAL enable_indexscan = on;
	SET LOCAL enable_seqscan = off;
	CREATE TEMP TABLE hv_approx AS SELECT q.id AS qid, s.id FROM (SELECT id, v FROM hv WHERE id % 100 = 1) q,
		LATERAL (SELECT id FROM hv ORDER BY v <-> q.v LIMIT 10) s;
	SELECT count(*)::float8 / greatest((SELECT count(*) FROM hv_truth), 1) INTO r
		FROM hv_truth JOIN hv_approx USING (qid, id);
	DROP TABLE hv_truth, hv_approx;
	RETURN r;
END $$;

-- delete a third, vacuum: dead rows are gone from the index, graph is sound
DELETE FROM hv WHERE id % 3 = 0;
VACUUM hv;
SELECT elements, deleted_elements, heap_tids FROM gnnvec_index_info('hv_idx');
SELECT * FROM gnnvec_index_check('hv_idx');
SELECT hv_recall() >= 0.9 AS recall_after_delete_ok;
SET enable_seqscan = off;
SELECT count(*) AS deleted_rows_returned FROM (SELECT id FROM hv ORDER BY v <-> '[0,0,0,0,0,0,0,0]' LIMIT 100) s WHERE id % 3 = 0;
RESET enable_seqscan;

-- re-insert them: deleted elements are reused, the index does not grow much
INSERT INTO hv SELECT * FROM hv_keep WHERE id % 3 = 0;
-- (an element of level l is reused only by one of level <= l)
SELECT elements, deleted_elements < 50 AS mostly_reused, heap_tids FROM gnnvec_index_info('hv_idx');
SELECT pages <= (SELECT before FROM hv_size) * 1.15 AS size_bounded FROM gnnvec_index_info('hv_idx');
SELECT * FROM gnnvec_index_check('hv_idx');
SELECT hv_recall() >= 0.9 AS recall_after_reinsert_ok;

-- delete and re-insert several rounds: still bounded
DELETE FROM hv WHERE id % 2 = 0;
VACUUM hv;
INSERT INTO hv SELECT * FROM hv_keep WHERE id % 2 = 0;
DELETE FROM hv WHERE id % 5 = 0;
VACUUM hv;
INSERT INTO hv SELECT * FROM hv_keep WHERE id % 5 = 0;
SELECT pages <= (SELECT before FROM hv_size) * 1.3 AS size_bounded_after_rounds FROM gnnvec_index_info('hv_idx');
SELECT * FROM gnnvec_index_check('hv_idx');
SELECT hv_recall() >= 0.9 AS recall_after_rounds_ok;

-- delete almost everything (the entry point goes), then everything
DELETE FROM hv WHERE id > 10;
VACUUM hv;
SELECT elements, heap_tids FROM gnnvec_index_info('hv_idx');
SELECT * FROM gnnvec_index_check('hv_idx');
SET enable_seqscan = off;
SELECT id FROM hv ORDER BY v <-> (SELECT v FROM hv_keep WHERE id = 3) LIMIT 1;
DELETE FROM hv;
VACUUM hv;
SELECT elements, heap_tids, entry_point, entry_level FROM gnnvec_index_info('hv_idx');
SELECT count(*) FROM (SELECT id FROM hv ORDER BY v <-> '[0,0,0,0,0,0,0,0]' LIMIT 5) s;
-- and the empty index takes rows again
INSERT INTO hv SELECT * FROM hv_keep WHERE id <= 100;
SELECT id FROM hv ORDER BY v <-> (SELECT v FROM hv_keep WHERE id = 42) LIMIT 1;
SELECT * FROM gnnvec_index_check('hv_idx');
RESET enable_seqscan;

DROP TABLE hv;
DROP FUNCTION hv_recall();
