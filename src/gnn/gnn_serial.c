/*
 * gnn_serial.c
 *		Models and EWC state to and from flat byte buffers, for bytea
 *		columns.  Every field is written byte by byte in little-endian order,
 *		so the format does not depend on struct layout, host byte order or
 *		on whether gnn_real is float or double (values are stored as float32).
 *
 * Model, version 2 (60 + 4 n_params bytes):
 *	 0 "GNNM"  4 u16 version  6 u16 flags (0)  8 u32 in_dim  12 u32 hidden_dim
 *	 16 u32 heads  20 u32 reserved (0)  24 f64 dropout  32 f64 ln_eps
 *	 40 u64 seed  48 u64 n_params  56 u32 CRC-32  60 f32 params[n_params]
 *	 Version 1 is the same with one parameter fewer: the score had no
 *	 neighbourhood term (GNN_MIX, the last tensor, held two weights); it
 *	 is read with that term off, which scores as the model did.
 * EWC, version 1 (36 + 12 n bytes):
 *	 0 "GNNE"  4 u16 version  6 u16 flags (bit 0: active)  8 u64 n
 *	 16 f64 lambda  24 u64 n_observed  32 u32 CRC-32
 *	 36 f32 fisher[n], anchor[n], sq_grad_sum[n]
 * The CRC-32 (IEEE 802.3) covers every byte except its own four.
 */
#include <math.h>
#include <string.h>

#include "gnn/gnn.h"

#define MODEL_MAGIC		"GNNM"
#define EWC_MAGIC		"GNNE"
#define MODEL_VERSION	2
#define MODEL_VERSION_2_PARAMS 1	/* parameters version 2 added */
#define EWC_VERSION		1
#define MODEL_HEADER	60
#define MODEL_CRC_AT	56
#define EWC_HEADER		36
#define EWC_CRC_AT		32
#define EWC_ACTIVE		1

/* ---- little-endian fields ------------------------------------------------- */

static void
put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t) (v >> (8 * i));
}

static uint64_t
get_u64(const uint8_t *p)
{
	uint64_t	v = 0;

	for (int i = 0; i < 8; i++)
		v |= (uint64_t) p[i] << (8 * i);
	return v;
}

static void
put_u32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t) (v >> (8 * i));
}

static uint32_t
get_u32(const uint8_t *p)
{
	return (uint32_t) p[0] | (uint32_t) p[1] << 8 |
		(uint32_t) p[2] << 16 | (uint32_t) p[3] << 24;
}

static void
put_u16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t) v;
	p[1] = (uint8_t) (v >> 8);
}

static uint16_t
get_u16(const uint8_t *p)
{
	return (uint16_t) (p[0] | p[1] << 8);
}

static void
put_f64(uint8_t *p, double v)
{
	uint64_t	bits;

	memcpy(&bits, &v, sizeof(bits));
	put_u64(p, bits);
}

static double
get_f64(const uint8_t *p)
{
	uint64_t	bits = get_u64(p);
	double		v;

	memcpy(&v, &bits, sizeof(v));
	return v;
}

static void
put_f32_array(uint8_t *p, const gnn_real *x, size_t n)
{
	for (size_t i = 0; i < n; i++)
	{
		float		f = (float) x[i];
		uint32_t	bits;

		memcpy(&bits, &f, sizeof(bits));
		put_u32(p + 4 * i, bits);
	}
}

/* Returns false if any value is NaN or infinite. */
static bool
get_f32_array(const uint8_t *p, gnn_real *x, size_t n)
{
	for (size_t i = 0; i < n; i++)
	{
		uint32_t	bits = get_u32(p + 4 * i);
		float		f;

		memcpy(&f, &bits, sizeof(f));
		if (!isfinite(f))
			return false;
		x[i] = f;
	}
	return true;
}

/* CRC-32 (reflected polynomial 0xEDB88320), four bits at a time. */
static uint32_t
crc32_update(uint32_t crc, const uint8_t *p, size_t n)
{
	static const uint32_t table[16] = {
		0x00000000, 0x1db71064, 0x3b6e20c8, 0x26d930ac,
		0x76dc4190, 0x6b6b51f4, 0x4db26158, 0x5005713c,
		0xedb88320, 0xf00f9344, 0xd6d6a3e8, 0xcb61b38c,
		0x9b64c2b0, 0x86d3d2d4, 0xa00ae278, 0xbdbdf21c
	};

	for (size_t i = 0; i < n; i++)
	{
		crc ^= p[i];
		crc = (crc >> 4) ^ table[crc & 15];
		crc = (crc >> 4) ^ table[crc & 15];
	}
	return crc;
}

/* CRC of a buffer except the four bytes at crc_at. */
static uint32_t
buffer_crc(const uint8_t *buf, size_t len, size_t crc_at)
{
	uint32_t	crc = 0xffffffff;

	crc = crc32_update(crc, buf, crc_at);
	crc = crc32_update(crc, buf + crc_at + 4, len - crc_at - 4);
	return crc ^ 0xffffffff;
}

/* Magic, version, length and CRC: the checks both formats share. */
static GnnStatus
check_envelope(const uint8_t *buf, size_t len, const char *magic,
			   size_t header, size_t crc_at, int oldest, int newest,
			   const char *what, GnnError *err)
{
	uint16_t	version;

	if (buf == NULL || len < header)
		return gnn_error(err, GNN_ERR_CORRUPT,
						 "%s data is truncated: %zu bytes, the header alone is %zu",
						 what, len, header);
	if (memcmp(buf, magic, 4) != 0)
		return gnn_error(err, GNN_ERR_CORRUPT, "%s data has a wrong magic number", what);
	version = get_u16(buf + 4);
	if (version < oldest || version > newest)
		return gnn_error(err, GNN_ERR_VERSION,
						 "%s data has format version %u; this build reads versions %d to %d",
						 what, version, oldest, newest);
	if (get_u32(buf + crc_at) != buffer_crc(buf, len, crc_at))
		return gnn_error(err, GNN_ERR_CORRUPT, "%s data fails its CRC-32 check", what);
	return GNN_OK;
}

/* ---- model ----------------------------------------------------------------- */

size_t
gnn_model_serialized_size(const GnnModel *model)
{
	return MODEL_HEADER + 4 * model->n_params;
}

void
gnn_model_serialize(const GnnModel *model, uint8_t *buf)
{
	size_t		len = gnn_model_serialized_size(model);

	memcpy(buf, MODEL_MAGIC, 4);
	put_u16(buf + 4, MODEL_VERSION);
	put_u16(buf + 6, 0);
	put_u32(buf + 8, (uint32_t) model->cfg.in_dim);
	put_u32(buf + 12, (uint32_t) model->cfg.hidden_dim);
	put_u32(buf + 16, (uint32_t) model->cfg.heads);
	put_u32(buf + 20, 0);
	put_f64(buf + 24, model->cfg.dropout);
	put_f64(buf + 32, model->cfg.ln_eps);
	put_u64(buf + 40, model->cfg.seed);
	put_u64(buf + 48, model->n_params);
	put_f32_array(buf + MODEL_HEADER, model->params, model->n_params);
	put_u32(buf + MODEL_CRC_AT, buffer_crc(buf, len, MODEL_CRC_AT));
}

GnnStatus
gnn_model_deserialize(const uint8_t *buf, size_t len, GnnModel **out,
					  GnnError *err)
{
	GnnConfig	cfg;
	uint32_t	d,
				h,
				heads;
	uint64_t	n_params;
	uint64_t	missing;		/* parameters an older version lacks */
	GnnModel   *model;
	GnnStatus	rc;

	*out = NULL;
	rc = check_envelope(buf, len, MODEL_MAGIC, MODEL_HEADER, MODEL_CRC_AT,
						1, MODEL_VERSION, "GNN model", err);
	if (rc != GNN_OK)
		return rc;
	missing = get_u16(buf + 4) < 2 ? MODEL_VERSION_2_PARAMS : 0;
	d = get_u32(buf + 8);
	h = get_u32(buf + 12);
	heads = get_u32(buf + 16);
	n_params = get_u64(buf + 48);
	if (get_u16(buf + 6) != 0 || get_u32(buf + 20) != 0)
		return gnn_error(err, GNN_ERR_CORRUPT, "GNN model data has unknown flags");
	if (d < 1 || d > GNN_MAX_DIM || h < 1 || h > GNN_MAX_DIM)
		return gnn_error(err, GNN_ERR_CORRUPT,
						 "GNN model data has impossible dimensions %u x %u", d, h);
	if (n_params + missing != gnn_model_param_count((int) d, (int) h) ||
		len != MODEL_HEADER + 4 * n_params)
		return gnn_error(err, GNN_ERR_CORRUPT,
						 "GNN model data size %zu does not match its dimensions %u x %u",
						 len, d, h);
	gnn_config_default(&cfg, (int) d, (int) h);
	cfg.heads = (int) heads;
	cfg.dropout = get_f64(buf + 24);
	cfg.ln_eps = get_f64(buf + 32);
	cfg.seed = get_u64(buf + 40);
	if ((rc = gnn_model_create_empty(&cfg, &model, err)) != GNN_OK)
		return rc == GNN_ERR_ARG ? gnn_error(err, GNN_ERR_CORRUPT,
											 "GNN model data has an invalid configuration: %s",
											 err != NULL ? err->message : "") : rc;
	if (!get_f32_array(buf + MODEL_HEADER, model->params, n_params))
	{
		gnn_model_free(model);
		return gnn_error(err, GNN_ERR_CORRUPT, "GNN model data contains NaN or infinity");
	}
	if (missing > 0)
		gnn_model_tensor(model, GNN_MIX)[2] = -GNN_SCORE_LOG_LIMIT;
	*out = model;
	return GNN_OK;
}

/* ---- EWC ------------------------------------------------------------------- */

size_t
gnn_ewc_serialized_size(const GnnEwc *ewc)
{
	return EWC_HEADER + 12 * ewc->n;
}

void
gnn_ewc_serialize(const GnnEwc *ewc, uint8_t *buf)
{
	size_t		len = gnn_ewc_serialized_size(ewc);
	uint8_t    *p = buf + EWC_HEADER;

	memcpy(buf, EWC_MAGIC, 4);
	put_u16(buf + 4, EWC_VERSION);
	put_u16(buf + 6, ewc->active ? EWC_ACTIVE : 0);
	put_u64(buf + 8, ewc->n);
	put_f64(buf + 16, ewc->lambda);
	put_u64(buf + 24, (uint64_t) ewc->n_observed);
	put_f32_array(p, ewc->fisher, ewc->n);
	put_f32_array(p + 4 * ewc->n, ewc->anchor, ewc->n);
	for (size_t i = 0; i < ewc->n; i++)
	{
		float		f = (float) ewc->sq_grad_sum[i];
		uint32_t	bits;

		memcpy(&bits, &f, sizeof(bits));
		put_u32(p + 8 * ewc->n + 4 * i, bits);
	}
	put_u32(buf + EWC_CRC_AT, buffer_crc(buf, len, EWC_CRC_AT));
}

GnnStatus
gnn_ewc_deserialize(const uint8_t *buf, size_t len, GnnEwc *ewc, GnnError *err)
{
	uint64_t	n;
	uint16_t	flags;
	const uint8_t *p = buf + EWC_HEADER;
	GnnStatus	rc;

	memset(ewc, 0, sizeof(GnnEwc));
	rc = check_envelope(buf, len, EWC_MAGIC, EWC_HEADER, EWC_CRC_AT,
						EWC_VERSION, EWC_VERSION, "GNN EWC", err);
	if (rc != GNN_OK)
		return rc;
	n = get_u64(buf + 8);
	flags = get_u16(buf + 6);
	if ((flags & ~EWC_ACTIVE) != 0 || (int64_t) get_u64(buf + 24) < 0)
		return gnn_error(err, GNN_ERR_CORRUPT, "GNN EWC data has unknown flags");
	if (n > (len - EWC_HEADER) / 12 || len != EWC_HEADER + 12 * n)
		return gnn_error(err, GNN_ERR_CORRUPT,
						 "GNN EWC data size %zu does not match its %llu parameters",
						 len, (unsigned long long) n);
	if ((rc = gnn_ewc_init(ewc, n, get_f64(buf + 16), err)) != GNN_OK)
		return rc == GNN_ERR_ARG ? gnn_error(err, GNN_ERR_CORRUPT,
											 "GNN EWC data has an invalid lambda") : rc;
	ewc->active = (flags & EWC_ACTIVE) != 0;
	ewc->n_observed = (int64_t) get_u64(buf + 24);
	if (!get_f32_array(p, ewc->fisher, n) ||
		!get_f32_array(p + 4 * n, ewc->anchor, n))
	{
		gnn_ewc_free(ewc);
		return gnn_error(err, GNN_ERR_CORRUPT, "GNN EWC data contains NaN or infinity");
	}
	for (size_t i = 0; i < n; i++)
	{
		uint32_t	bits = get_u32(p + 8 * n + 4 * i);
		float		f;

		memcpy(&f, &bits, sizeof(f));
		if (!isfinite(f) || f < 0 || ewc->fisher[i] < 0)
		{
			gnn_ewc_free(ewc);
			return gnn_error(err, GNN_ERR_CORRUPT,
							 "GNN EWC data has a negative or non-finite importance");
		}
		ewc->sq_grad_sum[i] = f;
	}
	return GNN_OK;
}
