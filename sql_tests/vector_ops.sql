-- vector operators, functions and aggregates
CREATE EXTENSION IF NOT EXISTS gnnvec;

SELECT '[1,2,3]'::vector <-> '[3,2,1]' AS l2,
       '[1,2,3]'::vector <#> '[3,2,1]' AS neg_ip,
       '[1,2,3]'::vector <=> '[3,2,1]' AS cosine,
       '[1,2,3]'::vector <+> '[3,2,1]' AS l1;
SELECT l2_distance('[0,0]', '[3,4]'), vector_l2_squared_distance('[0,0]', '[3,4]'),
       inner_product('[1,2]', '[3,4]'), vector_negative_inner_product('[1,2]', '[3,4]'),
       cosine_distance('[1,0]', '[0,1]'), cosine_distance('[1,1]', '[-1,-1]'),
       l1_distance('[1,2]', '[-1,5]');
-- cosine of a zero vector is undefined
SELECT cosine_distance('[0,0]', '[1,1]');
-- long vectors go through the SIMD kernels: compare with SQL arithmetic
WITH v AS (
  SELECT array_agg(sin(i)::real ORDER BY i)::vector AS a,
         array_agg(cos(i * 0.7)::real ORDER BY i)::vector AS b,
         array_agg(sin(i)::real::float8 ORDER BY i) AS aa,
         array_agg(cos(i * 0.7)::real::float8 ORDER BY i) AS bb
  FROM generate_series(1, 1537) i
)
SELECT abs((a <-> b) - sqrt((SELECT sum((aa[i] - bb[i])^2) FROM generate_series(1, 1537) i))) < 1e-4 AS l2_ok,
       abs((a <#> b) + (SELECT sum(aa[i] * bb[i]) FROM generate_series(1, 1537) i)) < 1e-3 AS ip_ok,
       abs((a <+> b) - (SELECT sum(abs(aa[i] - bb[i])) FROM generate_series(1, 1537) i)) < 1e-3 AS l1_ok
FROM v;

SELECT vector_dims('[1,2,3]'), vector_norm('[3,4]'), l2_normalize('[3,4]'), l2_normalize('[0,0]');
SELECT subvector('[1,2,3,4,5]', 2, 3), subvector('[1,2,3,4,5]', -1, 3), subvector('[1,2,3,4,5]', 4, 10);
SELECT subvector('[1,2,3]', 4, 1);
SELECT subvector('[1,2,3]', 1, 0);
SELECT subvector('[1,2,3]', 1, -1);

SELECT '[1,2,3]'::vector + '[4,5,6]', '[1,2,3]'::vector - '[4,5,6]', '[1,2,3]'::vector * '[4,5,6]';
SELECT '[1,2]'::vector || '[3]';
SELECT vector_dims(array_fill(1, ARRAY[8000])::vector || array_fill(1, ARRAY[8000])::vector);
SELECT array_fill(1, ARRAY[8000])::vector || array_fill(1, ARRAY[8001])::vector;
SELECT '[3e38]'::vector + '[3e38]';
SELECT '[-3e38]'::vector - '[3e38]';
SELECT '[1e20]'::vector * '[1e20]';
SELECT '[1e-30]'::vector * '[1e-30]';

-- dimension mismatch, every binary operator
SELECT '[1,2]'::vector <-> '[1,2,3]';
SELECT '[1,2]'::vector <#> '[1,2,3]';
SELECT '[1,2]'::vector <=> '[1,2,3]';
SELECT '[1,2]'::vector <+> '[1,2,3]';
SELECT '[1,2]'::vector + '[1,2,3]';
SELECT '[1,2]'::vector - '[1,2,3]';
SELECT '[1,2]'::vector * '[1,2,3]';

-- comparison and btree
SELECT '[1,2]'::vector < '[1,3]', '[1,2]'::vector = '[1,2]', '[1,2]'::vector <> '[1,2,0]',
       '[1,2]'::vector < '[1,2,0]', '[2]'::vector > '[1,9]', vector_cmp('[1]', '[1]');
CREATE TABLE ord_t (v vector);
INSERT INTO ord_t VALUES ('[2,1]'), ('[1,2,3]'), ('[1,2]'), ('[0,5]'), ('[1,2]');
CREATE INDEX ON ord_t USING btree (v);
SET enable_seqscan = off;
SELECT v FROM ord_t WHERE v >= '[1,2]' ORDER BY v;
RESET enable_seqscan;
SELECT DISTINCT v FROM ord_t ORDER BY v;
DROP TABLE ord_t;

-- aggregates
SELECT avg(v), sum(v) FROM (VALUES ('[1,2,3]'::vector), ('[3,4,5]'), (NULL)) t(v);
SELECT avg(v), sum(v) FROM (SELECT '[1]'::vector WHERE false) t(v);
SELECT avg(v) FROM (VALUES ('[1,2]'::vector), ('[1,2,3]')) t(v);
SELECT sum(v) FROM (VALUES ('[1,2]'::vector), ('[1,2,3]')) t(v);
SELECT sum(v) FROM (VALUES ('[3e38]'::vector), ('[3e38]')) t(v);
-- parallel aggregation gives the same answer
CREATE TABLE agg_t AS SELECT ARRAY[i % 7, i % 11, 1]::vector AS v FROM generate_series(1, 50000) i;
ANALYZE agg_t;
SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
EXPLAIN (COSTS OFF) SELECT avg(v) FROM agg_t;
SELECT avg(v), sum(v) FROM agg_t;
RESET ALL;
DROP TABLE agg_t;

-- the GPU module loads on demand; without it the error says what to do
DO $$
BEGIN
  PERFORM count(*) FROM gnnvec_gpu_devices();
  RAISE NOTICE 'GPU query answered';
EXCEPTION WHEN feature_not_supported THEN
  RAISE NOTICE 'GPU query answered';
END $$;
