-- Trajectories: the executor hook records executed plan nodes by operator
-- scope, with the query embedding of vector ORDER BYs (per-backend state)
CREATE EXTENSION IF NOT EXISTS gnnvec;

SELECT * FROM gnnvec_trajectory_stats();
SELECT count(*) FROM gnnvec_trajectories();
-- (the settings exist once the library is loaded)
SHOW gnnvec.record_trajectories;
SHOW gnnvec.trajectory_capacity;

CREATE TABLE traj_items (id int PRIMARY KEY, cat int, v vector(3));
INSERT INTO traj_items SELECT i, i % 5, ARRAY[i % 11, i % 7, 1]::real[]::vector
FROM generate_series(1, 200) i;
CREATE TABLE traj_cats (cat int, label text);
INSERT INTO traj_cats SELECT c, 'cat ' || c FROM generate_series(0, 4) c;
ANALYZE traj_items, traj_cats;

-- nothing is recorded while off
SELECT count(*) FROM traj_items;
SELECT total FROM gnnvec_trajectory_stats();

-- a known plan: Limit, Sort, Hash Join over two Seq Scans (the Hash node is
-- part of the join)
SET enable_mergejoin = off;
SET enable_nestloop = off;
EXPLAIN (COSTS OFF)
SELECT i.id, c.label FROM traj_items i JOIN traj_cats c USING (cat) ORDER BY i.id DESC LIMIT 3;
SET gnnvec.record_trajectories = on;
SELECT i.id, c.label FROM traj_items i JOIN traj_cats c USING (cat) ORDER BY i.id DESC LIMIT 3;
SET gnnvec.record_trajectories = off;
SELECT id, scope, rows, loops, embedding, execution_ms >= 0 AS timed FROM gnnvec_trajectories() ORDER BY id;
-- the first node of each type is its own baseline; the second Seq Scan's
-- baseline is the first one's time
SELECT t.id, t.scope, t.baseline_ms = t.execution_ms AS own_baseline, t.improvement = 0 AS zero
FROM gnnvec_trajectories() t WHERE t.id < 5 ORDER BY id;
SELECT b.baseline_ms = a.execution_ms AS running_mean,
       b.improvement = (a.execution_ms - b.execution_ms) / a.execution_ms AS improvement_defined
FROM gnnvec_trajectories() a, gnnvec_trajectories() b WHERE a.id = 4 AND b.id = 5;
RESET enable_mergejoin;
RESET enable_nestloop;

-- EXPLAIN without ANALYZE executes nothing and records nothing
SET gnnvec.record_trajectories = on;
EXPLAIN (COSTS OFF) SELECT * FROM traj_items;
SET gnnvec.record_trajectories = off;
SELECT total FROM gnnvec_trajectory_stats();

-- every mapped node type, one query each
SELECT gnnvec_trajectory_reset();
SET gnnvec.record_trajectories = on;
SELECT count(*) FROM traj_items;                             -- Aggregate, SeqScan
SELECT cat, count(*) FROM traj_items GROUP BY cat ORDER BY cat;  -- Sort, GroupBy, SeqScan
SET enable_seqscan = off;
SELECT id FROM traj_items WHERE id = 7;                      -- IndexScan
SET enable_indexscan = off;
SELECT id FROM traj_items WHERE id = 8;                      -- IndexScan (bitmap)
RESET enable_seqscan;
RESET enable_indexscan;
SET enable_hashjoin = off;
SET enable_mergejoin = off;
SELECT count(*) FROM traj_cats a JOIN traj_cats b ON a.cat < b.cat;  -- NestedLoopJoin, Materialize
RESET enable_mergejoin;
SET enable_nestloop = off;
SELECT count(*) FROM traj_cats a JOIN traj_cats b USING (cat);       -- MergeJoin
RESET enable_hashjoin;
RESET enable_nestloop;
SELECT 1 AS one;                                             -- Result
SELECT generate_series(1, 3) AS g;                           -- ProjectSet over Result
SET gnnvec.record_trajectories = off;
SELECT id, scope, rows, loops FROM gnnvec_trajectories() ORDER BY id;
SELECT total, buffered, count_by_operator FROM gnnvec_trajectory_stats();

-- the query embedding: a constant vector of an ORDER BY distance ...
SELECT gnnvec_trajectory_reset();
SET gnnvec.record_trajectories = on;
SELECT id FROM traj_items ORDER BY v <-> '[3,1,1]', id LIMIT 2;
SELECT id FROM traj_items ORDER BY v <=> '[0,1,0]', id LIMIT 1;
-- ... a prepared statement's parameter, in a custom and a generic plan ...
PREPARE nearest(vector) AS SELECT id FROM traj_items ORDER BY v <#> $1, id LIMIT 1;
EXECUTE nearest('[1,2,3]');
SET plan_cache_mode = force_generic_plan;
EXECUTE nearest('[4,5,6]');
RESET plan_cache_mode;
-- ... and none for an ORDER BY that is not a distance
SELECT id FROM traj_items ORDER BY id DESC LIMIT 1;
SET gnnvec.record_trajectories = off;
SELECT id, scope, embedding FROM gnnvec_trajectories() ORDER BY id;

-- an embedding wider than gnnvec.lora_max_dim is left out, and counted
SELECT gnnvec_trajectory_reset();
SET gnnvec.record_trajectories = on;
SELECT 1 FROM (SELECT array_fill(1, ARRAY[2049])::vector AS w FROM traj_cats LIMIT 1) s
ORDER BY w <-> array_fill(0, ARRAY[2049])::vector;
SET gnnvec.record_trajectories = off;
SELECT scope, embedding IS NULL AS no_embedding FROM gnnvec_trajectories() ORDER BY id;
SELECT embeddings_dropped FROM gnnvec_trajectory_stats();

-- statistics: improvement is at most 1 (a node cannot take less than 0 ms)
SELECT total, buffered,
       best_improvement <= 1 AS best_ok, mean_improvement <= best_improvement AS mean_ok,
       success_rate BETWEEN 0 AND 1 AS rate_ok, variance >= 0 AS variance_ok,
       high_quality
FROM gnnvec_trajectory_stats(1);
SELECT high_quality = buffered AS all_above FROM gnnvec_trajectory_stats('-Infinity');
SELECT high_quality = (SELECT count(*) FROM gnnvec_trajectories() WHERE improvement > 0.1) AS counted
FROM gnnvec_trajectory_stats(0.1);
SELECT success_rate = (SELECT avg((improvement > 0)::int) FROM gnnvec_trajectories()) AS rate_defined,
       abs(mean_improvement - (SELECT avg(improvement) FROM gnnvec_trajectories())) < 1e-12 AS mean_defined,
       abs(variance - (SELECT var_pop(improvement) FROM gnnvec_trajectories())) < 1e-9 AS variance_defined
FROM gnnvec_trajectory_stats();
SELECT * FROM gnnvec_trajectory_stats(NULL);
SELECT * FROM gnnvec_trajectory_stats('NaN');

-- queries that functions run go through the same hooks
SELECT gnnvec_trajectory_reset();
CREATE FUNCTION pg_temp.count_items() RETURNS bigint LANGUAGE plpgsql AS
  $$ DECLARE n bigint; BEGIN SELECT count(*) INTO n FROM traj_items; RETURN n; END $$;
SET gnnvec.record_trajectories = on;
SELECT pg_temp.count_items();
SET gnnvec.record_trajectories = off;
SELECT id, scope, rows FROM gnnvec_trajectories() ORDER BY id;

-- reset empties the ring and the baselines
SELECT gnnvec_trajectory_reset();
SELECT * FROM gnnvec_trajectory_stats();

-- trajectories hold other sessions' queries: superuser only
CREATE ROLE regress_lora_user;
SET ROLE regress_lora_user;
SET gnnvec.record_trajectories = on;
SELECT count(*) FROM gnnvec_trajectories();
SELECT * FROM gnnvec_trajectory_stats();
SELECT gnnvec_trajectory_reset();
RESET ROLE;
DROP ROLE regress_lora_user;
DROP TABLE traj_items, traj_cats;
