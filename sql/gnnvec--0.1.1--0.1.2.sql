-- gnnvec 0.1.1 -> 0.1.2
\echo Use "ALTER EXTENSION gnnvec UPDATE TO '0.1.2'" to load this file. \quit
