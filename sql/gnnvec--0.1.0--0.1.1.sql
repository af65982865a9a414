-- gnnvec 0.1.0 -> 0.1.1
\echo Use "ALTER EXTENSION gnnvec UPDATE TO '0.1.1'" to load this file. \quit

-- ===== MicroLoRA =====
--
-- The adapters and the fallback switch are one state for every backend
-- (in shared memory with shared_preload_libraries = 'gnnvec'): changing them
-- is for superusers and the roles they grant EXECUTE to, e.g.
--   GRANT EXECUTE ON FUNCTION gnnvec_lora_adapt(text, vector) TO tuner;
-- The integer overloads are SQL wrappers of the text ones; both are closed.
-- gnnvec_lora_forward, gnnvec_lora_stats and gnnvec_lora_scopes stay open.
REVOKE ALL ON FUNCTION gnnvec_lora_adapt(text, vector) FROM PUBLIC;
REVOKE ALL ON FUNCTION gnnvec_lora_adapt(integer, vector) FROM PUBLIC;
REVOKE ALL ON FUNCTION gnnvec_lora_reward(text, double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION gnnvec_lora_reward(integer, double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION gnnvec_lora_reset(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION gnnvec_lora_reset(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION gnnvec_lora_reset_all() FROM PUBLIC;
REVOKE ALL ON FUNCTION gnnvec_lora_category_fallback(boolean) FROM PUBLIC;

-- ===== gnnhnsw scan cache =====
--
-- Each backend keeps the vectors of the elements its index scans read, per
-- index, up to gnnvec.scan_cache_size (src/hnsw/hnswscan.c).  One row per
-- index this backend caches: the index generation the vectors were read
-- under (VACUUM bumps it when it frees elements), how many, and the bytes.
CREATE FUNCTION gnnvec_scan_cache(OUT index regclass, OUT generation bigint,
	OUT elements bigint, OUT bytes bigint)
	RETURNS SETOF record
	AS 'MODULE_PATHNAME' LANGUAGE C STRICT;
