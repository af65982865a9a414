-- gnnvec 0.1.1 -> 0.1.2
\echo Use "ALTER EXTENSION gnnvec UPDATE TO '0.1.2'" to load this file. \quit

-- The scan cache: whether an index's cache holds 8-bit codes (the index
-- is larger than gnnvec.scan_cache_size) or float vectors.
DROP FUNCTION gnnvec_scan_cache();
CREATE FUNCTION gnnvec_scan_cache(OUT index regclass, OUT generation bigint,
	OUT elements bigint, OUT bytes bigint, OUT codes boolean)
	RETURNS SETOF record
	AS 'MODULE_PATHNAME' LANGUAGE C STRICT;

-- ---- Online feedback (issue 14: learning) ----------------------------------
-- Feedback is logged as events, cheaply and by any role granted
-- gnnvec_feedback; gnnvec_feedback_train learns from them in batches and
-- consumes them.  The functions write the table as its owner; the table is
-- closed to PUBLIC.
CREATE TABLE gnnvec_feedback_events (
	id			bigserial PRIMARY KEY,
	index_oid	oid NOT NULL,
	query		vector NOT NULL,
	positive	vector NOT NULL,
	logged_by	text NOT NULL,
	created		timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX gnnvec_feedback_events_index ON gnnvec_feedback_events (index_oid, id);
REVOKE ALL ON gnnvec_feedback_events FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('gnnvec_feedback_events', '');
SELECT pg_catalog.pg_extension_config_dump('gnnvec_feedback_events_id_seq', '');

-- Roles are global and outlive the extension: made once, kept.
DO $$
BEGIN
	IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'gnnvec_feedback') THEN
		CREATE ROLE gnnvec_feedback NOLOGIN;
	END IF;
END $$;

-- Was (version, loss): one training step and a model row written per call.
DROP FUNCTION gnnvec_feedback(regclass, vector, vector);
CREATE FUNCTION gnnvec_feedback(index regclass, query vector, positive vector)
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'gnnvec_feedback' LANGUAGE C VOLATILE STRICT;

CREATE FUNCTION gnnvec_feedback_train(index regclass, max_events integer DEFAULT 1000,
	OUT events integer, OUT skipped integer, OUT version bigint,
	OUT loss double precision, OUT optimizer_steps bigint)
	RETURNS record
	AS 'MODULE_PATHNAME', 'gnnvec_feedback_train' LANGUAGE C VOLATILE STRICT;

-- Models and pending feedback go with their dropped index.
CREATE OR REPLACE FUNCTION gnnvec_models_on_drop() RETURNS event_trigger
	LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
	DELETE FROM @extschema@.gnnvec_models m
		USING pg_catalog.pg_event_trigger_dropped_objects() d
		WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
		  AND d.objsubid = 0 AND m.index_oid = d.objid;
	DELETE FROM @extschema@.gnnvec_feedback_events f
		USING pg_catalog.pg_event_trigger_dropped_objects() d
		WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
		  AND d.objsubid = 0 AND f.index_oid = d.objid;
END $$;
