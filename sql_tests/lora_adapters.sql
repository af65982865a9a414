-- MicroLoRA adapters per operator scope: forward, adapt, reward, fallback,
-- resets, stats, and every error (per-backend state: not preloaded here)
CREATE EXTENSION IF NOT EXISTS gnnvec;

-- values rounded, so that SIMD summation order cannot change the output
CREATE FUNCTION pg_temp.r(v vector) RETURNS numeric[] LANGUAGE sql AS
  $$ SELECT array_agg(round(u::numeric, 4) ORDER BY i) FROM unnest($1::real[]) WITH ORDINALITY AS t(u, i) $$;
CREATE FUNCTION pg_temp.dot(a vector, b vector) RETURNS float8 LANGUAGE sql AS
  $$ SELECT -($1 <#> $2) $$;
-- w a + (1 - w) b
CREATE FUNCTION pg_temp.blend(w float8, a vector, b vector) RETURNS vector LANGUAGE sql AS
  $$ SELECT array_agg((w * x + (1 - w) * y)::real ORDER BY i)::vector
     FROM unnest($2::real[], $3::real[]) WITH ORDINALITY AS t(x, y, i) $$;

-- the 17 scopes of the seed, 7 categories, and the plan nodes they map from
SELECT * FROM gnnvec_lora_scopes();

SHOW gnnvec.lora_rank;
SHOW gnnvec.lora_alpha;
SHOW gnnvec.lora_learning_rate;

-- an untrained adapter is the identity (B starts at zero); the first call
-- says once that state is per backend
SELECT gnnvec_lora_forward('HnswScan', '[1,2,3]');
SELECT gnnvec_lora_forward('hnswscan', '[1,2,3]');
SELECT gnnvec_lora_forward('HNSWSCAN', '[1,2,3]');
SELECT gnnvec_lora_forward(2, '[1,2,3]');
SELECT gnnvec_lora_forward('2', '[1,2,3]');
SELECT scope, name, category, kind, dim, rank, alpha, forward_count, adapt_count,
       delta_norm, param_count, weight
FROM gnnvec_lora_stats() WHERE dim IS NOT NULL OR forward_count > 0;

-- adapting by gradient g = dL/dy lowers L = <g, y> at the same input
SELECT gnnvec_lora_forward('HnswScan', '[0.5,-1,2]') AS y0 \gset
SELECT gnnvec_lora_adapt('HnswScan', '[1,0,-1]');
SELECT gnnvec_lora_forward('HnswScan', '[0.5,-1,2]') AS y1 \gset
SELECT pg_temp.dot(:'y1', '[1,0,-1]') < pg_temp.dot(:'y0', '[1,0,-1]') AS loss_went_down;
SELECT name, adapt_count, delta_norm > 0 AS learned, weight
FROM gnnvec_lora_stats() WHERE name IN ('HnswScan', 'Scan');

-- category fallback: after 3 adaptations HnswScan answers with
-- 0.3 * its own adapter + 0.7 * the Scan category adapter
SELECT gnnvec_lora_adapt(2, '[1,0,-1]');
SELECT pg_temp.r(gnnvec_lora_forward('HnswScan', '[0.5,-1,2]'));
SELECT gnnvec_lora_adapt('HnswScan', '[1,0,-1]');
SELECT weight FROM gnnvec_lora_stats() WHERE name = 'HnswScan';
SELECT gnnvec_lora_forward('HnswScan', '[0.5,-1,2]') AS blended \gset
-- an untrained sibling (SeqScan) answers with the category adapter alone
SELECT gnnvec_lora_forward('SeqScan', '[0.5,-1,2]') AS cat \gset
SELECT gnnvec_lora_category_fallback(false);
SELECT gnnvec_lora_forward('HnswScan', '[0.5,-1,2]') AS own \gset
SELECT weight FROM gnnvec_lora_stats() WHERE name = 'HnswScan';
SELECT (:'blended'::vector <-> pg_temp.blend(0.3, :'own', :'cat')) < 1e-5 AS blend_ok,
       (:'own'::vector <-> :'blended') > 1e-4 AS fallback_mattered;
SELECT gnnvec_lora_category_fallback(true);
SELECT name, kind, forward_count, adapt_count FROM gnnvec_lora_stats()
WHERE name IN ('HnswScan', 'SeqScan', 'Scan');

-- reward: a positive one moves the output along the last input
SELECT gnnvec_lora_category_fallback(false);
SELECT gnnvec_lora_forward('Sort', '[3,4]') AS r0 \gset
SELECT gnnvec_lora_reward('Sort', 0.8);
SELECT gnnvec_lora_forward('Sort', '[3,4]') AS r1 \gset
SELECT pg_temp.dot(:'r1', '[3,4]') > pg_temp.dot(:'r0', '[3,4]') AS moved_along_input;
SELECT gnnvec_lora_reward(11, -0.8);
SELECT gnnvec_lora_forward('Sort', '[3,4]') AS r2 \gset
SELECT pg_temp.dot(:'r2', '[3,4]') < pg_temp.dot(:'r1', '[3,4]') AS moved_back;
-- rewards are clipped to [-1, 1]
SELECT gnnvec_lora_reset('Sort');
SELECT gnnvec_lora_forward('Sort', '[3,4]') IS NOT NULL;
SELECT gnnvec_lora_reward('Sort', 1);
SELECT gnnvec_lora_forward('Sort', '[3,4]') AS c1 \gset
SELECT gnnvec_lora_reset('Sort');
SELECT gnnvec_lora_forward('Sort', '[3,4]') IS NOT NULL;
SELECT gnnvec_lora_reward('Sort', 1e6);
SELECT gnnvec_lora_forward('Sort', '[3,4]') AS c2 \gset
SELECT :'c1'::vector = :'c2'::vector AS clipped;
-- fallback switched on after the last input: the category adapter starts there
SELECT gnnvec_lora_category_fallback(true);
SELECT gnnvec_lora_reward('Sort', 0.5);
SELECT name, kind, dim, adapt_count FROM gnnvec_lora_stats() WHERE name IN ('Sort', 'Order');

-- rank above the default, at a larger dimension; alpha is kept per adapter
SET gnnvec.lora_rank = 8;
SET gnnvec.lora_alpha = 0.5;
SELECT gnnvec_lora_forward('Rerank', array_fill(0.25, ARRAY[1536])::vector) = array_fill(0.25, ARRAY[1536])::vector AS identity;
SELECT gnnvec_lora_adapt('Rerank', array_fill(0.01, ARRAY[1536])::vector);
SELECT name, kind, dim, rank, alpha, param_count, delta_norm > 0 AS learned
FROM gnnvec_lora_stats() WHERE name IN ('Rerank', 'Vector');
RESET gnnvec.lora_rank;
RESET gnnvec.lora_alpha;

-- reset of one scope: forgets it and its dimension, keeps its category
SELECT gnnvec_lora_reset('HnswScan');
SELECT name, dim, forward_count, adapt_count, delta_norm > 0 AS learned
FROM gnnvec_lora_stats() WHERE name IN ('HnswScan', 'Scan');
SELECT gnnvec_lora_category_fallback(false);
SELECT pg_temp.r(gnnvec_lora_forward('HnswScan', '[1,2,3,4]'));
SELECT gnnvec_lora_category_fallback(true);
-- reset_all: every adapter forgets
SELECT gnnvec_lora_reset_all();
SELECT count(*) FILTER (WHERE dim IS NOT NULL) AS initialised,
       sum(forward_count) AS forwards, sum(adapt_count) AS adapts, max(delta_norm) AS max_delta
FROM gnnvec_lora_stats();
SELECT gnnvec_lora_forward('HnswScan', '[1,2,3,4,5]');

-- NULL in, NULL out
SELECT gnnvec_lora_forward('HnswScan', NULL) IS NULL, gnnvec_lora_forward(NULL::text, '[1]') IS NULL;

-- errors: scopes
SELECT gnnvec_lora_forward('Hnsw', '[1,2,3]');
SELECT gnnvec_lora_forward('', '[1,2,3]');
SELECT gnnvec_lora_forward(' HnswScan', '[1,2,3]');
SELECT gnnvec_lora_forward(17, '[1,2,3]');
SELECT gnnvec_lora_forward(-1, '[1,2,3]');
SELECT gnnvec_lora_forward('17', '[1,2,3]');
SELECT gnnvec_lora_adapt('nope', '[1,2,3]');
SELECT gnnvec_lora_reward(99, 0.5);
SELECT gnnvec_lora_reset('Scan');

-- errors: dimensions
SELECT gnnvec_lora_forward('HnswScan', '[1,2,3]');
SELECT gnnvec_lora_adapt('HnswScan', '[1,2,3]');
SELECT gnnvec_lora_forward('IndexScan', '[1,2,3]');
SELECT gnnvec_lora_category_fallback(false);
SELECT pg_temp.r(gnnvec_lora_forward('IndexScan', '[1,2,3]'));
SELECT gnnvec_lora_category_fallback(true);

-- errors: adapting a scope that has seen no input
SELECT gnnvec_lora_adapt('MergeJoin', '[1,2]');
SELECT gnnvec_lora_reward('MergeJoin', 0.5);

-- errors: rewards that are not finite numbers
SELECT gnnvec_lora_forward('Limit', '[1,2]') IS NOT NULL;
SELECT gnnvec_lora_reward('Limit', 'NaN');
SELECT gnnvec_lora_reward('Limit', 'Infinity');
SELECT gnnvec_lora_reward('Limit', '-Infinity');

-- errors: an update that overflows resets the adapter
SELECT gnnvec_lora_reset_all();
SET gnnvec.lora_alpha = 1000;
SET gnnvec.lora_learning_rate = 1000;
SELECT gnnvec_lora_category_fallback(false);
SELECT gnnvec_lora_forward('Result', '[1e30,1e30]') IS NOT NULL;
SELECT gnnvec_lora_adapt('Result', '[1e30,-1e30]');
SELECT name, dim, adapt_count FROM gnnvec_lora_stats() WHERE name = 'Result';
-- and an output that overflows changes nothing
SELECT gnnvec_lora_forward('Result', '[1,1]') IS NOT NULL;
SELECT gnnvec_lora_adapt('Result', '[-10,-10]');
SELECT gnnvec_lora_forward('Result', '[3e38,3e38]');
SELECT name, dim, forward_count, adapt_count FROM gnnvec_lora_stats() WHERE name = 'Result';
SELECT gnnvec_lora_category_fallback(true);
RESET gnnvec.lora_alpha;
RESET gnnvec.lora_learning_rate;

-- errors: settings
SET gnnvec.lora_rank = 0;
SET gnnvec.lora_rank = 9;
SET gnnvec.lora_alpha = -1;
SET gnnvec.lora_alpha = 'NaN';
SET gnnvec.lora_learning_rate = -0.5;
SET gnnvec.lora_learning_rate = 1e6;
SET gnnvec.lora_max_dim = 4096;
SET gnnvec.trajectory_capacity = 10;
