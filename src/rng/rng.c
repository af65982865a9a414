/*
 * rng.c
 *		splitmix64 and the uniform and normal draws built on it.  No
 *		PostgreSQL includes.
 */
#include "rng/rng.h"

#include <math.h>

uint64_t
splitmix64_next(uint64_t *state)
{
	uint64_t	z = (*state += UINT64_C(0x9e3779b97f4a7c15));

	z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
	return z ^ (z >> 31);
}

double
splitmix64_unit(uint64_t *state)
{
	return (double) (splitmix64_next(state) >> 11) * (1.0 / 9007199254740992.0);
}

double
splitmix64_unit_open(uint64_t *state)
{
	return ((splitmix64_next(state) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

/* The pair's second value is discarded to keep the state a single word. */
double
splitmix64_normal(uint64_t *state)
{
	double		u1 = splitmix64_unit_open(state);
	double		u2 = splitmix64_unit_open(state);

	return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}
