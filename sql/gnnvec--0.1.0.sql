-- gnnvec 0.1.0
\echo Use "CREATE EXTENSION gnnvec" to load this file. \quit

-- ===== vector type (pgvector-compatible) =====

CREATE TYPE vector;

CREATE FUNCTION vector_in(cstring, oid, integer) RETURNS vector
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_out(vector) RETURNS cstring
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_typmod_in(cstring[]) RETURNS integer
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_recv(internal, oid, integer) RETURNS vector
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_send(vector) RETURNS bytea
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE TYPE vector (
	INPUT     = vector_in,
	OUTPUT    = vector_out,
	TYPMOD_IN = vector_typmod_in,
	RECEIVE   = vector_recv,
	SEND      = vector_send,
	STORAGE   = external
);

-- distances and functions

CREATE FUNCTION l2_distance(vector, vector) RETURNS float8
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_l2_squared_distance(vector, vector) RETURNS float8
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION inner_product(vector, vector) RETURNS float8
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_negative_inner_product(vector, vector) RETURNS float8
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION cosine_distance(vector, vector) RETURNS float8
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION l1_distance(vector, vector) RETURNS float8
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_dims(vector) RETURNS integer
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_norm(vector) RETURNS float8
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION l2_normalize(vector) RETURNS vector
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION subvector(vector, integer, integer) RETURNS vector
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- arithmetic and comparison

CREATE FUNCTION vector_add(vector, vector) RETURNS vector
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_sub(vector, vector) RETURNS vector
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_mul(vector, vector) RETURNS vector
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_concat(vector, vector) RETURNS vector
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_lt(vector, vector) RETURNS bool
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_le(vector, vector) RETURNS bool
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_eq(vector, vector) RETURNS bool
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_ne(vector, vector) RETURNS bool
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_ge(vector, vector) RETURNS bool
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_gt(vector, vector) RETURNS bool
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_cmp(vector, vector) RETURNS integer
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- aggregates

CREATE FUNCTION vector_accum(double precision[], vector) RETURNS double precision[]
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_combine(double precision[], double precision[]) RETURNS double precision[]
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_avg(double precision[]) RETURNS vector
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE AGGREGATE avg(vector) (
	SFUNC = vector_accum,
	STYPE = double precision[],
	FINALFUNC = vector_avg,
	COMBINEFUNC = vector_combine,
	INITCOND = '{0}',
	PARALLEL = SAFE
);

CREATE AGGREGATE sum(vector) (
	SFUNC = vector_add,
	STYPE = vector,
	COMBINEFUNC = vector_add,
	PARALLEL = SAFE
);

-- casts

CREATE FUNCTION vector(vector, integer, boolean) RETURNS vector
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION array_to_vector(integer[], integer, boolean) RETURNS vector
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION array_to_vector(real[], integer, boolean) RETURNS vector
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION array_to_vector(double precision[], integer, boolean) RETURNS vector
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION array_to_vector(numeric[], integer, boolean) RETURNS vector
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_to_float4(vector, integer, boolean) RETURNS real[]
	AS 'MODULE_PATHNAME', 'vector_to_array' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_to_float8(vector, integer, boolean) RETURNS double precision[]
	AS 'MODULE_PATHNAME', 'vector_to_array' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION vector_to_numeric(vector, integer, boolean) RETURNS numeric[]
	AS 'MODULE_PATHNAME', 'vector_to_array' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE CAST (vector AS vector)
	WITH FUNCTION vector(vector, integer, boolean) AS IMPLICIT;
CREATE CAST (integer[] AS vector)
	WITH FUNCTION array_to_vector(integer[], integer, boolean) AS ASSIGNMENT;
CREATE CAST (real[] AS vector)
	WITH FUNCTION array_to_vector(real[], integer, boolean) AS ASSIGNMENT;
CREATE CAST (double precision[] AS vector)
	WITH FUNCTION array_to_vector(double precision[], integer, boolean) AS ASSIGNMENT;
CREATE CAST (numeric[] AS vector)
	WITH FUNCTION array_to_vector(numeric[], integer, boolean) AS ASSIGNMENT;
CREATE CAST (vector AS real[])
	WITH FUNCTION vector_to_float4(vector, integer, boolean) AS IMPLICIT;
CREATE CAST (vector AS double precision[])
	WITH FUNCTION vector_to_float8(vector, integer, boolean);
CREATE CAST (vector AS numeric[])
	WITH FUNCTION vector_to_numeric(vector, integer, boolean);

-- operators

CREATE OPERATOR <-> (
	LEFTARG = vector, RIGHTARG = vector, PROCEDURE = l2_distance,
	COMMUTATOR = '<->'
);
CREATE OPERATOR <#> (
	LEFTARG = vector, RIGHTARG = vector, PROCEDURE = vector_negative_inner_product,
	COMMUTATOR = '<#>'
);
CREATE OPERATOR <=> (
	LEFTARG = vector, RIGHTARG = vector, PROCEDURE = cosine_distance,
	COMMUTATOR = '<=>'
);
CREATE OPERATOR <+> (
	LEFTARG = vector, RIGHTARG = vector, PROCEDURE = l1_distance,
	COMMUTATOR = '<+>'
);
CREATE OPERATOR + (
	LEFTARG = vector, RIGHTARG = vector, PROCEDURE = vector_add,
	COMMUTATOR = +
);
CREATE OPERATOR - (
	LEFTARG = vector, RIGHTARG = vector, PROCEDURE = vector_sub
);
CREATE OPERATOR * (
	LEFTARG = vector, RIGHTARG = vector, PROCEDURE = vector_mul,
	COMMUTATOR = *
);
CREATE OPERATOR || (
	LEFTARG = vector, RIGHTARG = vector, PROCEDURE = vector_concat
);
CREATE OPERATOR < (
	LEFTARG = vector, RIGHTARG = vector, PROCEDURE = vector_lt,
	COMMUTATOR = > , NEGATOR = >= ,
	RESTRICT = scalarltsel, JOIN = scalarltjoinsel
);
CREATE OPERATOR <= (
	LEFTARG = vector, RIGHTARG = vector, PROCEDURE = vector_le,
	COMMUTATOR = >= , NEGATOR = > ,
	RESTRICT = scalarlesel, JOIN = scalarlejoinsel
);
CREATE OPERATOR = (
	LEFTARG = vector, RIGHTARG = vector, PROCEDURE = vector_eq,
	COMMUTATOR = = , NEGATOR = <> ,
	RESTRICT = eqsel, JOIN = eqjoinsel
);
CREATE OPERATOR <> (
	LEFTARG = vector, RIGHTARG = vector, PROCEDURE = vector_ne,
	COMMUTATOR = <> , NEGATOR = = ,
	RESTRICT = neqsel, JOIN = neqjoinsel
);
CREATE OPERATOR >= (
	LEFTARG = vector, RIGHTARG = vector, PROCEDURE = vector_ge,
	COMMUTATOR = <= , NEGATOR = < ,
	RESTRICT = scalargesel, JOIN = scalargejoinsel
);
CREATE OPERATOR > (
	LEFTARG = vector, RIGHTARG = vector, PROCEDURE = vector_gt,
	COMMUTATOR = < , NEGATOR = <= ,
	RESTRICT = scalargtsel, JOIN = scalargtjoinsel
);

CREATE OPERATOR CLASS vector_ops
	DEFAULT FOR TYPE vector USING btree AS
	OPERATOR 1 < ,
	OPERATOR 2 <= ,
	OPERATOR 3 = ,
	OPERATOR 4 >= ,
	OPERATOR 5 > ,
	FUNCTION 1 vector_cmp(vector, vector);

-- ===== GPU module =====

CREATE FUNCTION gnnvec_gpu_devices(
	OUT device integer, OUT name text, OUT total_memory_mb bigint)
	RETURNS SETOF record
	AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE STRICT;

-- ===== MicroLoRA and trajectories =====
--
-- Adapters y = x + alpha (x A) B per planner operator scope and per scope
-- category (src/lora/lora.h).  A scope is one of the 17 operator type names
-- of gnnvec_lora_scopes(), in any case, or its number 0..16.  State lives in
-- shared memory with shared_preload_libraries = 'gnnvec', else per backend.

CREATE FUNCTION gnnvec_lora_scopes(
	OUT scope integer, OUT name text, OUT category text, OUT plan_nodes text)
	RETURNS SETOF record
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION gnnvec_lora_forward(scope text, input vector) RETURNS vector
	AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE STRICT;
CREATE FUNCTION gnnvec_lora_forward(scope integer, input vector) RETURNS vector
	AS 'SELECT @extschema@.gnnvec_lora_forward($1::text, $2)' LANGUAGE sql VOLATILE STRICT;

CREATE FUNCTION gnnvec_lora_adapt(scope text, gradient vector) RETURNS void
	AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE STRICT;
CREATE FUNCTION gnnvec_lora_adapt(scope integer, gradient vector) RETURNS void
	AS 'SELECT @extschema@.gnnvec_lora_adapt($1::text, $2)' LANGUAGE sql VOLATILE STRICT;

CREATE FUNCTION gnnvec_lora_reward(scope text, improvement double precision) RETURNS void
	AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE STRICT;
CREATE FUNCTION gnnvec_lora_reward(scope integer, improvement double precision) RETURNS void
	AS 'SELECT @extschema@.gnnvec_lora_reward($1::text, $2)' LANGUAGE sql VOLATILE STRICT;

CREATE FUNCTION gnnvec_lora_reset(scope text) RETURNS void
	AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE STRICT;
CREATE FUNCTION gnnvec_lora_reset(scope integer) RETURNS void
	AS 'SELECT @extschema@.gnnvec_lora_reset($1::text)' LANGUAGE sql VOLATILE STRICT;

CREATE FUNCTION gnnvec_lora_reset_all() RETURNS void
	AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE;

CREATE FUNCTION gnnvec_lora_category_fallback(enabled boolean) RETURNS void
	AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION gnnvec_lora_stats(
	OUT scope integer, OUT name text, OUT category text, OUT kind text,
	OUT dim integer, OUT rank integer, OUT alpha real,
	OUT forward_count bigint, OUT adapt_count bigint, OUT delta_norm double precision,
	OUT param_count bigint, OUT weight double precision)
	RETURNS SETOF record
	AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE;

-- Trajectories hold other sessions' query vectors: superusers only, unless granted.
CREATE FUNCTION gnnvec_trajectories(
	OUT id bigint, OUT scope text, OUT execution_ms double precision,
	OUT baseline_ms double precision, OUT improvement double precision,
	OUT rows double precision, OUT loops double precision,
	OUT embedding vector, OUT recorded_at timestamptz)
	RETURNS SETOF record
	AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE;

CREATE FUNCTION gnnvec_trajectory_stats(
	threshold double precision DEFAULT 0.5,
	OUT total bigint, OUT buffered integer, OUT mean_improvement double precision,
	OUT best_improvement double precision, OUT success_rate double precision,
	OUT variance double precision, OUT high_quality integer,
	OUT embeddings_dropped bigint, OUT count_by_operator jsonb)
	RETURNS record
	AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION gnnvec_trajectory_reset() RETURNS void
	AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE;

REVOKE ALL ON FUNCTION gnnvec_trajectories() FROM PUBLIC;
REVOKE ALL ON FUNCTION gnnvec_trajectory_stats(double precision) FROM PUBLIC;
REVOKE ALL ON FUNCTION gnnvec_trajectory_reset() FROM PUBLIC;

-- ===== gnnhnsw access method =====

CREATE FUNCTION gnnhnsw_handler(internal) RETURNS index_am_handler
	AS 'MODULE_PATHNAME' LANGUAGE C;

CREATE ACCESS METHOD gnnhnsw TYPE INDEX HANDLER gnnhnsw_handler;

COMMENT ON ACCESS METHOD gnnhnsw IS 'HNSW graph index for vector similarity search';

-- Support function 1 of each operator class names the graph's metric.
CREATE FUNCTION gnnhnsw_l2_support(internal) RETURNS internal
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION gnnhnsw_ip_support(internal) RETURNS internal
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION gnnhnsw_cosine_support(internal) RETURNS internal
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
CREATE FUNCTION gnnhnsw_l1_support(internal) RETURNS internal
	AS 'MODULE_PATHNAME' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE OPERATOR CLASS vector_l2_ops
	DEFAULT FOR TYPE vector USING gnnhnsw AS
	OPERATOR 1 <-> (vector, vector) FOR ORDER BY float_ops,
	FUNCTION 1 gnnhnsw_l2_support(internal);

CREATE OPERATOR CLASS vector_ip_ops
	FOR TYPE vector USING gnnhnsw AS
	OPERATOR 1 <#> (vector, vector) FOR ORDER BY float_ops,
	FUNCTION 1 gnnhnsw_ip_support(internal);

CREATE OPERATOR CLASS vector_cosine_ops
	FOR TYPE vector USING gnnhnsw AS
	OPERATOR 1 <=> (vector, vector) FOR ORDER BY float_ops,
	FUNCTION 1 gnnhnsw_cosine_support(internal);

CREATE OPERATOR CLASS vector_l1_ops
	FOR TYPE vector USING gnnhnsw AS
	OPERATOR 1 <+> (vector, vector) FOR ORDER BY float_ops,
	FUNCTION 1 gnnhnsw_l1_support(internal);

-- Structure of a gnnhnsw index.
CREATE FUNCTION gnnvec_index_info(index regclass,
	OUT elements bigint, OUT deleted_elements bigint, OUT heap_tids bigint,
	OUT levels integer, OUT mean_degree float8, OUT entry_point tid,
	OUT entry_level integer, OUT pages bigint, OUT bytes bigint,
	OUT dims integer, OUT m integer, OUT ef_construction integer)
	RETURNS record
	AS 'MODULE_PATHNAME' LANGUAGE C STRICT;

-- amcheck-style verification: one row per problem, none when the index is sound.
CREATE FUNCTION gnnvec_index_check(index regclass,
	OUT blkno bigint, OUT offnum integer, OUT problem text)
	RETURNS SETOF record
	AS 'MODULE_PATHNAME' LANGUAGE C STRICT;

-- ===== GNN models, rerank and training =====
--
-- One row per (index, scope, kind): a GNN reranker ('gnn') trained for an
-- operator scope of a gnnhnsw index (src/gnn/gnn.h).  index_oid is what
-- lookups use; index_name (schema-qualified, at the last save) lets a
-- restored dump, whose indexes have new OIDs, find its rows again.  Rows go
-- with their index through the event trigger below.  Only the functions
-- (which check ownership or SELECT on the index's table) read and write it.

CREATE TABLE gnnvec_models (
	index_oid	oid NOT NULL,
	index_name	text NOT NULL,
	scope		text NOT NULL,
	kind		text NOT NULL CHECK (kind IN ('gnn', 'lora')),
	version		bigint NOT NULL CHECK (version > 0),
	config		text NOT NULL,
	model		bytea NOT NULL,
	state		bytea,
	created		timestamptz NOT NULL DEFAULT now(),
	updated		timestamptz NOT NULL DEFAULT now(),
	CONSTRAINT gnnvec_models_pkey PRIMARY KEY (index_oid, scope, kind)
);
CREATE INDEX gnnvec_models_name ON gnnvec_models (index_name);
REVOKE ALL ON gnnvec_models FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('gnnvec_models', '');

-- Models of dropped indexes (DROP INDEX, DROP TABLE, DROP SCHEMA ... CASCADE)
-- go in the same transaction.  SECURITY DEFINER: whoever may drop an index
-- may drop its models.
CREATE FUNCTION gnnvec_models_on_drop() RETURNS event_trigger
	LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	DELETE FROM @extschema@.gnnvec_models m
		USING pg_catalog.pg_event_trigger_dropped_objects() d
		WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
		  AND d.objsubid = 0 AND m.index_oid = d.objid;
END $$;
REVOKE ALL ON FUNCTION gnnvec_models_on_drop() FROM PUBLIC;
CREATE EVENT TRIGGER gnnvec_models_on_drop ON sql_drop
	WHEN TAG IN ('DROP INDEX', 'DROP TABLE', 'DROP SCHEMA', 'DROP OWNED',
				 'DROP MATERIALIZED VIEW')
	EXECUTE FUNCTION gnnvec_models_on_drop();

CREATE FUNCTION gnnvec_search(index regclass, query vector, k integer,
	rerank boolean DEFAULT true,
	OUT tid tid, OUT distance double precision, OUT score double precision)
	RETURNS SETOF record
	AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION gnnvec_train(index regclass, pairs_sql text,
	scope text DEFAULT 'Rerank', epochs integer DEFAULT 5,
	hidden integer DEFAULT 64, learning_rate double precision DEFAULT 0.0003,
	candidates integer DEFAULT 32, random_negatives integer DEFAULT 4,
	validation_fraction double precision DEFAULT 0.2, seed bigint DEFAULT 42,
	OUT epoch integer, OUT loss double precision,
	OUT val_recall_at_10 double precision)
	RETURNS SETOF record
	AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE;

CREATE FUNCTION gnnvec_feedback(index regclass, query vector, positive vector,
	OUT version bigint, OUT loss double precision)
	RETURNS record
	AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION gnnvec_model_info(index regclass,
	OUT scope text, OUT kind text, OUT version bigint, OUT config text,
	OUT bytes integer, OUT updated timestamptz)
	RETURNS SETOF record
	AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION gnnvec_model_reset(index regclass, scope text DEFAULT NULL)
	RETURNS integer
	AS 'MODULE_PATHNAME' LANGUAGE C VOLATILE;
