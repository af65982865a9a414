-- vector type: text and binary I/O, typmod, casts
CREATE EXTENSION IF NOT EXISTS gnnvec;

-- text round trip: shortest representation that reads back exactly
SELECT '[1,2.5,3]'::vector;
SELECT '  [ 1 , -2.5e-3 ,3 ]  '::vector;
SELECT '[1.0000001,0.1,3.4028235e38,-1e-45]'::vector;
SELECT '[0.1]'::vector::text::vector = '[0.1]'::vector AS round_trips;
SELECT '[1,2,3]'::vector(3);
SELECT vector_dims(array_fill(1.5::real, ARRAY[16000])::vector);

-- malformed text
SELECT '[1,,2]'::vector;
SELECT '[1 2]'::vector;
SELECT '1,2'::vector;
SELECT '[1,2]x'::vector;
SELECT '[1,2'::vector;
SELECT '[1,2,]'::vector;
SELECT '[,1]'::vector;
SELECT '[a]'::vector;
SELECT ''::vector;
SELECT '[]'::vector;
SELECT '[ ]'::vector;
SELECT '[NaN]'::vector;
SELECT '[1,Infinity]'::vector;
SELECT '[-inf]'::vector;
SELECT '[1e39]'::vector;
SELECT ('[' || repeat('1,', 16000) || '1]')::vector;

-- typmod
SELECT '[1,2]'::vector(3);
SELECT '[1,2,3]'::vector(2);
SELECT '[1]'::vector(0);
SELECT '[1]'::vector(16001);
SELECT '[1]'::vector(1, 2);
CREATE TABLE typmod_t (v vector(3));
INSERT INTO typmod_t VALUES ('[1,2,3]');
INSERT INTO typmod_t VALUES ('[1,2]');
INSERT INTO typmod_t VALUES ('[1,2]'::vector);
SELECT * FROM typmod_t;
SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'typmod_t'::regclass AND attname = 'v';
DROP TABLE typmod_t;

-- binary: int16 dim, int16 0, float4 x dim, network order
SELECT vector_send('[1,2.5,-3]'::vector);
SELECT encode(vector_send('[1]'), 'hex');
CREATE TABLE bin_t (id int, v vector);
INSERT INTO bin_t VALUES (1, '[1,2.5,-3]'), (2, '[0.1,1e-30]');
COPY bin_t TO '/tmp/gnnvec_regress_bin.copy' WITH (FORMAT binary);
CREATE TABLE bin_back (id int, v vector);
COPY bin_back FROM '/tmp/gnnvec_regress_bin.copy' WITH (FORMAT binary);
SELECT a.id, a.v = b.v AS same FROM bin_t a JOIN bin_back b USING (id) ORDER BY 1;
DROP TABLE bin_t, bin_back;
-- hand-made binary payloads: a binary COPY of a bytea column carries the raw
-- bytes, which COPY ... FROM then hands to the vector receive function
CREATE TABLE bin_in (v vector);
CREATE FUNCTION recv_raw(hex text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE format('COPY (SELECT decode(%L, ''hex'')) TO ''/tmp/gnnvec_regress_raw.copy'' (FORMAT binary)', hex);
  TRUNCATE bin_in;
  COPY bin_in FROM '/tmp/gnnvec_regress_raw.copy' (FORMAT binary);
  RETURN (SELECT v::text FROM bin_in);
END $$;
SELECT recv_raw('000200003f80000040000000');
SELECT recv_raw('000200013f80000040000000');
SELECT recv_raw('000000003f800000');
SELECT recv_raw('ffff00003f800000');
SELECT recv_raw('3e8100003f800000');
SELECT recv_raw('000200007fc0000040000000');
SELECT recv_raw('000200007f80000040000000');
SELECT recv_raw('000200003f800000');
DROP FUNCTION recv_raw(text);
DROP TABLE bin_in;

-- casts from and to arrays
SELECT ARRAY[1,2,3]::vector;
SELECT ARRAY[1.5,2.5]::real[]::vector;
SELECT ARRAY[1.5,2.5]::double precision[]::vector;
SELECT ARRAY[1.5,2.5]::numeric[]::vector;
SELECT ARRAY[1,2,3]::vector(3);
SELECT ARRAY[1,2]::vector(3);
SELECT '[1,2.5]'::vector::real[];
SELECT '[1,2.5]'::vector::double precision[];
SELECT '[1,2.5]'::vector::numeric[];
SELECT ARRAY[]::integer[]::vector;
SELECT ARRAY[1,NULL]::integer[]::vector;
SELECT ARRAY[[1,2],[3,4]]::integer[]::vector;
SELECT ARRAY['NaN']::real[]::vector;
SELECT ARRAY['Infinity']::double precision[]::vector;
SELECT ARRAY[1e300]::double precision[]::vector;
SELECT ARRAY[1e300]::numeric[]::vector;
SELECT array_fill(1, ARRAY[16001])::vector;
