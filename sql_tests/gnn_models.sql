-- GNN models: the model table, gnnvec_search, gnnvec_train, gnnvec_feedback,
-- gnnvec.rerank in index scans, permissions, drops, and every error path.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS gnnvec;

-- 400 distinct deterministic vectors in 8 dimensions
CREATE TABLE gm (id int PRIMARY KEY, v vector(8));
INSERT INTO gm SELECT i, (SELECT array_agg(sin(i * j * 0.37 + j)::real) FROM generate_series(1, 8) j)::vector
	FROM generate_series(1, 400) i;
CREATE INDEX gm_v ON gm USING gnnhnsw (v vector_l2_ops) WITH (m = 8);
CREATE TABLE gm_log (q vector(8), p vector(8));
-- logged pairs: the query is row i's vector slightly moved, the relevant row is i + 200
INSERT INTO gm_log SELECT a.v + '[0.01,0,0,0,0,0,0,0]', b.v FROM gm a JOIN gm b ON b.id = a.id + 200
	WHERE a.id <= 120;

-- no model yet: graph order, no score; distances are the operator's
SELECT count(*) AS n, bool_and(s.score IS NULL) AS no_score,
	bool_and(abs(s.distance - (g.v <-> q.v)) < 1e-5) AS true_distance
FROM (SELECT v FROM gm WHERE id = 7) q,
	LATERAL gnnvec_search('gm_v', q.v, 10) s JOIN gm g ON g.ctid = s.tid;
-- the same rows as the exact order
SELECT array_agg(g.id ORDER BY s.distance) = (SELECT array_agg(id) FROM
	(SELECT id FROM gm ORDER BY v <-> (SELECT v FROM gm WHERE id = 7) LIMIT 10) e) AS exact
FROM gnnvec_search('gm_v', (SELECT v FROM gm WHERE id = 7), 10) s JOIN gm g ON g.ctid = s.tid;
SELECT * FROM gnnvec_model_info('gm_v');

-- training: a row per epoch, finite losses, recall in [0, 1], deterministic
SELECT epoch, loss > 0 AND loss < 1e6 AS finite_loss, val_recall_at_10 BETWEEN 0 AND 1 AS recall_ok
FROM gnnvec_train('gm_v', 'SELECT q, p FROM gm_log', epochs => 3, hidden => 16);
SELECT scope, kind, version, config LIKE '%"train_pairs": 96, "validation_pairs": 24%' AS split,
	bytes > 1000 AS has_blob FROM gnnvec_model_info('gm_v');
-- the same seed from scratch gives the same losses; a saved model is the
-- starting point of the next training, so reset in between
CREATE TEMP TABLE scores0 AS SELECT s.tid, s.score
	FROM gnnvec_search('gm_v', (SELECT q FROM gm_log LIMIT 1), 10) s;
SELECT gnnvec_model_reset('gm_v');
CREATE TEMP TABLE run1 AS SELECT * FROM gnnvec_train('gm_v', 'SELECT q, p FROM gm_log',
	epochs => 2, hidden => 16, seed => 7, validation_fraction => 0);
SELECT gnnvec_model_reset('gm_v');
CREATE TEMP TABLE run2 AS SELECT * FROM gnnvec_train('gm_v', 'SELECT q, p FROM gm_log',
	epochs => 2, hidden => 16, seed => 7, validation_fraction => 0);
SELECT count(*) AS epochs, bool_and(val_recall_at_10 IS NULL) AS no_validation,
	(SELECT array_agg(loss ORDER BY epoch) FROM run1) = (SELECT array_agg(loss ORDER BY epoch) FROM run2)
		AS deterministic
FROM run1;
SELECT version FROM gnnvec_model_info('gm_v');
-- this backend's cached model was replaced: the scores changed (both
-- models are kept at raw distance, with a WARNING above, and break ties
-- with their layers at weight e^-30: any change of score counts)
SELECT count(*) FILTER (WHERE s.score <> o.score) > 0 AS new_scores
FROM gnnvec_search('gm_v', (SELECT q FROM gm_log LIMIT 1), 10) s JOIN scores0 o USING (tid);

-- a trained model scores; gnnvec_search ranks by score
SELECT count(*) AS n, bool_and(score IS NOT NULL) AS scored,
	bool_and(coalesce(prev >= score, true)) AS descending_scores
FROM (SELECT score, lag(score) OVER () AS prev
	FROM gnnvec_search('gm_v', (SELECT q FROM gm_log LIMIT 1), 10)) s;
SELECT count(*) AS n, bool_and(score IS NULL) AS unscored
FROM gnnvec_search('gm_v', (SELECT q FROM gm_log LIMIT 1), 10, rerank => false);

-- SET gnnvec.rerank: the index scan returns the reranked order, the
-- ORDER BY value stays the true distance
SET enable_seqscan = off;
SET gnnvec.rerank = on;
EXPLAIN (COSTS OFF) SELECT id FROM gm ORDER BY v <-> (SELECT q FROM gm_log LIMIT 1) LIMIT 10;
SELECT (SELECT array_agg(id) FROM (SELECT id FROM gm ORDER BY v <-> (SELECT q FROM gm_log LIMIT 1) LIMIT 10) t)
	= (SELECT array_agg(g.id) FROM gnnvec_search('gm_v', (SELECT q FROM gm_log LIMIT 1), 10) s
		JOIN gm g ON g.ctid = s.tid) AS scan_matches_search;
SELECT bool_and(abs(d - (SELECT sqrt(sum((a - b) ^ 2)) FROM
		unnest(v::real[], (SELECT q FROM gm_log LIMIT 1)::real[]) u(a, b))) < 1e-5) AS true_distance
FROM (SELECT v, v <-> (SELECT q FROM gm_log LIMIT 1) AS d FROM gm
	ORDER BY v <-> (SELECT q FROM gm_log LIMIT 1) LIMIT 10) t;
RESET gnnvec.rerank;
-- the plain scan against the exact order (a sequential scan and sort on
-- a function call the index cannot serve)
SELECT array_agg(id) = (SELECT array_agg(id) FROM (SELECT id FROM gm
	ORDER BY l2_distance(v, (SELECT q FROM gm_log LIMIT 1)), id LIMIT 10) e) AS plain_scan_is_distance_order
FROM (SELECT id FROM gm ORDER BY v <-> (SELECT q FROM gm_log LIMIT 1) LIMIT 10) t;
RESET enable_seqscan;
SHOW gnnvec.rerank_candidates;

-- self-supervised from the graph
SELECT count(*) AS epochs FROM gnnvec_train('gm_v', NULL, epochs => 2, hidden => 8, validation_fraction => 0);
-- only the scopes something reads: Rerank and HnswScan
SELECT count(*) FROM gnnvec_train('gm_v', NULL, scope => 'filter', epochs => 1, hidden => 8);
SELECT scope, version, config LIKE '%"self_supervised": true%' AS self_supervised
FROM gnnvec_model_info('gm_v') ORDER BY scope;

-- online feedback: events are logged without writing the model row, then
-- gnnvec_feedback_train learns from them in batches and consumes them
SELECT version AS version_before FROM gnnvec_model_info('gm_v') WHERE scope = 'Rerank' \gset
CREATE TEMP TABLE m_before AS SELECT model, config FROM gnnvec_models WHERE scope = 'Rerank';
SELECT bool_and(gnnvec_feedback('gm_v', q, p) > 0) AS logged
FROM (SELECT q, p FROM gm_log LIMIT 6) t;
SELECT count(*) AS pending, bool_and(logged_by = current_user) AS logged_by FROM gnnvec_feedback_events;
SELECT version = :version_before AS model_row_untouched
FROM gnnvec_model_info('gm_v') WHERE scope = 'Rerank';
CREATE TEMP TABLE fb1 AS SELECT * FROM gnnvec_feedback_train('gm_v', 4);
SELECT events, skipped, version = :version_before + 1 AS next_version, loss > 0 AS has_loss,
	optimizer_steps > 1 AS continues_training_steps FROM fb1;
SELECT count(*) AS pending FROM gnnvec_feedback_events;
-- the model changed; the training's metadata stayed, with the feedback counted
SELECT m.model <> b.model AS model_changed,
	(m.config::jsonb - 'feedback_events' - 'optimizer_steps') = b.config::jsonb AS metadata_kept,
	m.config::jsonb ->> 'feedback_events' AS feedback_events,
	(m.config::jsonb ->> 'optimizer_steps')::bigint = (SELECT optimizer_steps FROM fb1) AS steps_recorded
FROM gnnvec_models m, m_before b WHERE m.scope = 'Rerank';
-- the next call continues Adam where the last stopped (moments and step
-- count are kept in the model's state): one more step for two events
CREATE TEMP TABLE fb2 AS SELECT * FROM gnnvec_feedback_train('gm_v');
SELECT fb2.events, fb2.version - fb1.version AS versions_added,
	fb2.optimizer_steps - fb1.optimizer_steps AS steps_added
FROM fb1, fb2;
SELECT (config::jsonb ->> 'feedback_events') AS feedback_events FROM gnnvec_model_info('gm_v')
WHERE scope = 'Rerank';
-- nothing pending: nothing written
SELECT events, version IS NULL AS no_new_version, optimizer_steps = (SELECT optimizer_steps FROM fb2)
	AS same_steps FROM gnnvec_feedback_train('gm_v');

-- within a transaction: a new version is used at once, and no longer once
-- its savepoint is rolled back
BEGIN;
CREATE TEMP TABLE s_before AS
	SELECT tid, score FROM gnnvec_search('gm_v', (SELECT q FROM gm_log LIMIT 1), 10);
SAVEPOINT sp;
SELECT count(*) FROM gnnvec_train('gm_v', 'SELECT q, p FROM gm_log', epochs => 1, hidden => 8,
	seed => 99, validation_fraction => 0);
-- (a model kept at raw distance still breaks ties with its layer, at
-- weight e^-30: any change of score counts)
SELECT count(*) FILTER (WHERE s.score <> b.score) > 0 AS new_version_used
FROM gnnvec_search('gm_v', (SELECT q FROM gm_log LIMIT 1), 10) s JOIN s_before b USING (tid);
ROLLBACK TO SAVEPOINT sp;
SELECT count(*) = 10 AND count(*) FILTER (WHERE s.score <> b.score) = 0 AS old_version_again
FROM gnnvec_search('gm_v', (SELECT q FROM gm_log LIMIT 1), 10) s JOIN s_before b USING (tid);
COMMIT;
SELECT version FROM gnnvec_model_info('gm_v') WHERE scope = 'Rerank';
-- events consumed by a training that aborts come back
SELECT gnnvec_feedback('gm_v', (SELECT q FROM gm_log OFFSET 2 LIMIT 1),
	(SELECT p FROM gm_log OFFSET 2 LIMIT 1)) > 0 AS logged;
BEGIN;
SELECT events, skipped FROM gnnvec_feedback_train('gm_v');
SELECT count(*) AS pending FROM gnnvec_feedback_events;
ROLLBACK;
SELECT count(*) AS pending FROM gnnvec_feedback_events;
SELECT events, skipped FROM gnnvec_feedback_train('gm_v');

-- errors: search
SELECT * FROM gnnvec_search('gm_pkey', '[1,2,3,4,5,6,7,8]', 5);
SELECT * FROM gnnvec_search('gm', '[1,2,3,4,5,6,7,8]', 5);
SELECT * FROM gnnvec_search('gm_v', '[1,2,3]', 5);
SELECT * FROM gnnvec_search('gm_v', '[1,2,3,4,5,6,7,8]', 0);
SELECT * FROM gnnvec_search('gm_v', '[1,2,3,4,5,6,7,8]', 1001);
SELECT * FROM gnnvec_search('gm_v', '[1,2,3,4,5,6,7,NaN]', 5);
SELECT * FROM gnnvec_search(0, '[1,2,3,4,5,6,7,8]', 5);
SELECT count(*) FROM gnnvec_search('gm_v', NULL, 5);

-- errors: training
SELECT * FROM gnnvec_train('gm_v', 'SELEC q, p FROM gm_log');
SELECT * FROM gnnvec_train('gm_v', 'SELECT q FROM gm_log');
SELECT * FROM gnnvec_train('gm_v', 'SELECT 1, 2');
SELECT * FROM gnnvec_train('gm_v', 'SELECT q::text, p FROM gm_log');
SELECT * FROM gnnvec_train('gm_v', 'DELETE FROM gm_log');
SELECT count(*) FROM gm_log;
SELECT * FROM gnnvec_train('gm_v', 'SELECT q, p FROM gm_log WHERE false');
SELECT * FROM gnnvec_train('gm_v', 'SELECT q, q + ''[5,5,5,5,5,5,5,5]'' FROM gm_log');
SELECT * FROM gnnvec_train('gm_v', 'SELECT q, NULL::vector FROM gm_log');
SELECT * FROM gnnvec_train('gm_v', 'SELECT ''[1,2,3]''::vector, ''[1,2,3]''::vector');
SELECT * FROM gnnvec_train('gm_v', 'SELECT q, p FROM gm_log', scope => 'Sideways');
SELECT * FROM gnnvec_train('gm_v', 'SELECT q, p FROM gm_log', scope => '17');
SELECT * FROM gnnvec_train('gm_v', 'SELECT q, p FROM gm_log', scope => NULL);
SELECT * FROM gnnvec_train('gm_v', 'SELECT q, p FROM gm_log', epochs => 0);
SELECT * FROM gnnvec_train('gm_v', 'SELECT q, p FROM gm_log', hidden => 6);
SELECT * FROM gnnvec_train('gm_v', 'SELECT q, p FROM gm_log', learning_rate => 'NaN');
SELECT * FROM gnnvec_train('gm_v', 'SELECT q, p FROM gm_log', candidates => 1);
SELECT * FROM gnnvec_train('gm_v', 'SELECT q, p FROM gm_log', validation_fraction => 0.95);
SELECT * FROM gnnvec_train('gm_pkey', 'SELECT q, p FROM gm_log');
SELECT * FROM gnnvec_train(NULL, 'SELECT q, p FROM gm_log');
-- pairs_sql runs once per pass and must return as many rows each time
CREATE TEMP SEQUENCE gm_passes;
SELECT * FROM gnnvec_train('gm_v', 'SELECT q, p FROM gm_log LIMIT 10 + nextval(''gm_passes'')');
-- what training holds is bounded by maintenance_work_mem: a model that
-- leaves too little of it is refused
SET maintenance_work_mem = '1MB';
SELECT * FROM gnnvec_train('gm_v', 'SELECT q, p FROM gm_log');
RESET maintenance_work_mem;

-- training is cancellable: a statement timeout stops it, and what it held
-- (malloc'd model and optimiser) is released with its memory context
SET statement_timeout = '300ms';
SELECT count(*) FROM gnnvec_train('gm_v', 'SELECT q, p FROM gm_log', epochs => 1000);
RESET statement_timeout;
SELECT version FROM gnnvec_model_info('gm_v') WHERE scope = 'Rerank';

-- errors: feedback and reset; an event whose positive is not in the index
-- is consumed and skipped
SELECT gnnvec_feedback('gm_v', '[1,2,3,4,5,6,7,8]', '[9,9,9,9,9,9,9,9]') > 0 AS logged;
SELECT events, skipped, version IS NULL AS no_new_version FROM gnnvec_feedback_train('gm_v');
SELECT count(*) AS pending FROM gnnvec_feedback_events;
SELECT * FROM gnnvec_feedback('gm_v', '[1,2,3]', '[1,2,3]');
SELECT * FROM gnnvec_feedback('gm_pkey', '[1,2,3,4,5,6,7,8]', '[1,2,3,4,5,6,7,8]');
SELECT * FROM gnnvec_feedback_train('gm_v', 0);
SELECT * FROM gnnvec_feedback_train('gm_pkey');
SELECT gnnvec_model_reset('gm_v', 'nothing');

-- permissions: search needs SELECT on the table; changes need ownership
CREATE ROLE regress_gnn_reader;
SET ROLE regress_gnn_reader;
SELECT count(*) FROM gnnvec_search('gm_v', '[1,2,3,4,5,6,7,8]', 5);
RESET ROLE;
GRANT SELECT ON gm, gm_log TO regress_gnn_reader;
SET ROLE regress_gnn_reader;
SELECT count(*) FROM gnnvec_search('gm_v', '[1,2,3,4,5,6,7,8]', 5);
SELECT * FROM gnnvec_train('gm_v', 'SELECT q, p FROM gm_log');
SELECT * FROM gnnvec_feedback('gm_v', '[1,2,3,4,5,6,7,8]', '[1,2,3,4,5,6,7,8]');
SELECT * FROM gnnvec_feedback_train('gm_v');
SELECT gnnvec_model_reset('gm_v');
SELECT count(*) FROM gnnvec_models;
RESET ROLE;
-- a role granted gnnvec_feedback logs feedback (it needs SELECT on the
-- table too), but neither reads the events nor trains
CREATE ROLE regress_gnn_feedbacker;
GRANT gnnvec_feedback TO regress_gnn_feedbacker;
SET ROLE regress_gnn_feedbacker;
SELECT gnnvec_feedback('gm_v', '[1,2,3,4,5,6,7,8]', '[1,2,3,4,5,6,7,8]');
RESET ROLE;
GRANT SELECT ON gm, gm_log TO regress_gnn_feedbacker;
SET ROLE regress_gnn_feedbacker;
SELECT gnnvec_feedback('gm_v', q, p) > 0 AS logged FROM (SELECT q, p FROM gm_log LIMIT 1) t;
SELECT count(*) FROM gnnvec_feedback_events;
SELECT * FROM gnnvec_feedback_train('gm_v');
RESET ROLE;
SELECT logged_by FROM gnnvec_feedback_events;
SELECT events, skipped, version > :version_before AS trained FROM gnnvec_feedback_train('gm_v');

-- reset: one scope, then all
SELECT gnnvec_model_reset('gm_v', 'FILTER');
SELECT scope FROM gnnvec_model_info('gm_v');
SELECT gnnvec_model_reset('gm_v');
SELECT count(*) FROM gnnvec_model_info('gm_v');

-- models go with their index: DROP INDEX, DROP TABLE, DROP SCHEMA CASCADE
SELECT count(*) FROM gnnvec_train('gm_v', 'SELECT q, p FROM gm_log', epochs => 1, hidden => 8);
SELECT count(*) FROM gnnvec_models;
DROP INDEX gm_v;
SELECT count(*) FROM gnnvec_models;
CREATE INDEX gm_v ON gm USING gnnhnsw (v vector_l2_ops) WITH (m = 8);
SELECT count(*) FROM gnnvec_train('gm_v', 'SELECT q, p FROM gm_log', epochs => 1, hidden => 8);
CREATE SCHEMA gm_s;
CREATE TABLE gm_s.t AS SELECT * FROM gm WHERE id <= 100;
CREATE INDEX gm_s_v ON gm_s.t USING gnnhnsw (v vector_l2_ops) WITH (m = 8);
SELECT count(*) FROM gnnvec_train('gm_s.gm_s_v', NULL, epochs => 1, hidden => 8);
SELECT count(*) FROM gnnvec_models;
DROP TABLE gm;
SELECT count(*) FROM gnnvec_models;
DROP SCHEMA gm_s CASCADE;
SELECT count(*) FROM gnnvec_models;
-- pending feedback goes with its index too
CREATE TABLE gm2 (id int, v vector(2));
INSERT INTO gm2 VALUES (1, '[1,0]'), (2, '[0,1]');
CREATE INDEX gm2_v ON gm2 USING gnnhnsw (v vector_l2_ops);
SELECT gnnvec_feedback('gm2_v', '[1,0]', '[0,1]') > 0 AS logged;
SELECT count(*) FROM gnnvec_feedback_events;
DROP TABLE gm2;
SELECT count(*) FROM gnnvec_feedback_events;
DROP TABLE gm_log;
DROP ROLE regress_gnn_reader;
DROP ROLE regress_gnn_feedbacker;
