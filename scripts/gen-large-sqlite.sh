#!/usr/bin/env bash
# Generates a large synthetic SQLite database with mixed column types, for
# benchmarks and scale tests of the snapshot step.
#
#   scripts/gen-large-sqlite.sh ROWS OUT.sqlite
#
#   customers: max(1, ROWS/10) rows  (INTEGER, TEXT, VARCHAR, NUMERIC, REAL,
#              BOOLEAN, DATETIME, DATE, BLOB, JSON; NULLs in several columns)
#   orders:    ROWS rows, customer_id always an existing customer.
#
# Everything runs inside sqlite3 (recursive CTEs), no Python loops; the data is
# deterministic (a multiplicative hash of the row id, no random()). Texts are
# built from small word lists with modulo arithmetic so they repeat: roughly
# half of the non-NULL values of each text column are distinct.
# Refuses to overwrite an existing OUT unless FORCE=1.
set -euo pipefail

usage() {
  echo "usage: $(basename "$0") ROWS OUT.sqlite" >&2
  echo "  ROWS: number of orders (positive integer); customers = max(1, ROWS/10)" >&2
  echo "  set FORCE=1 to overwrite an existing OUT.sqlite" >&2
  exit 2
}

[ "$#" -eq 2 ] || usage
ROWS="$1"
OUT="$2"
if ! [[ "$ROWS" =~ ^[0-9]{1,12}$ ]] || [ $((10#$ROWS)) -lt 1 ]; then
  echo "error: ROWS must be a positive integer (at most 12 digits), got '$ROWS'" >&2
  usage
fi
ROWS=$((10#$ROWS))
[ -n "$OUT" ] || usage
command -v sqlite3 >/dev/null 2>&1 || { echo "error: sqlite3 CLI not found (Debian: apt-get install sqlite3)" >&2; exit 1; }

if [ -e "$OUT" ] && [ "${FORCE:-0}" != "1" ]; then
  echo "error: $OUT already exists; set FORCE=1 to overwrite it" >&2
  exit 1
fi

CUST=$((ROWS / 10))
[ "$CUST" -ge 1 ] || CUST=1
# Each text is a function of one key x = hash % M; M is picked so that about
# half of the (non-NULL) values are distinct (for a random map of N rows onto M
# keys the distinct share is (M/N)(1-exp(-N/M)), ~0.5 for M = 0.63 N; the
# factors below were tuned by measuring at 1M rows).
M_NAME=$(( CUST * 70 / 100 > 0 ? CUST * 70 / 100 : 1 ))      # names, all rows
M_CNOTE=$(( CUST * 55 / 100 > 0 ? CUST * 55 / 100 : 1 ))     # notes, 70% non-NULL
M_ONOTE=$(( ROWS * 38 / 100 > 0 ? ROWS * 38 / 100 : 1 ))     # order notes, 60% non-NULL

OUT_DIR="$(dirname "$OUT")"
mkdir -p "$OUT_DIR"
TMP="$OUT.tmp.$$"
trap 'rm -f "$TMP" "$TMP-journal"' EXIT
rm -f "$TMP"

# Small word lists live in TEMP tables (k INTEGER PRIMARY KEY, gone after the
# run); rows pick words with modulo arithmetic on their hash. h is a
# multiplicative (golden-ratio) hash of the id, too regular on its own for
# "x % M" keys, so those come from g, h re-mixed modulo a prime (no int64
# overflow: h < 2^32, multiplier < 2^31).
sqlite3 -bail "$TMP" >/dev/null <<SQL
PRAGMA journal_mode = OFF;
PRAGMA synchronous = OFF;
PRAGMA page_size = 8192;
PRAGMA cache_size = -262144;
PRAGMA temp_store = MEMORY;

CREATE TABLE customers (
  id INTEGER PRIMARY KEY,
  name TEXT,
  email VARCHAR(80),
  balance NUMERIC,
  score REAL,
  active BOOLEAN,
  created_at DATETIME,
  birthday DATE,
  avatar BLOB,
  profile JSON,
  notes TEXT
);
CREATE TABLE orders (
  id INTEGER PRIMARY KEY,
  customer_id INTEGER REFERENCES customers(id),
  amount REAL,
  status TEXT,
  placed_at DATETIME,
  note TEXT
);

-- word lists: w_first/w_last 16 words, w_note 8 phrases, w_word 32 words
CREATE TEMP TABLE w_first(k INTEGER PRIMARY KEY, w TEXT);
CREATE TEMP TABLE w_last(k INTEGER PRIMARY KEY, w TEXT);
CREATE TEMP TABLE w_note(k INTEGER PRIMARY KEY, w TEXT);
CREATE TEMP TABLE w_word(k INTEGER PRIMARY KEY, w TEXT);
CREATE TEMP TABLE w_status(k INTEGER PRIMARY KEY, w TEXT);
INSERT INTO w_first(w) VALUES ('Alice'),('Bruno'),('Chloé'),('Dmitri'),('Emma'),('François'),('Günter'),('Hana'),
  ('Ivan'),('Júlia'),('Kenji'),('Lena'),('Mateo'),('Nadia'),('Oskar'),('Zoë');
INSERT INTO w_last(w) VALUES ('Martin'),('Müller'),('Dubois'),('Tanaka'),('García'),('Rossi'),('Novak'),('Kowalski'),
  ('Silva'),('Jensen'),('Öztürk'),('Nguyen'),('Smith'),('Petrov'),('山田'),('O''Brien');
INSERT INTO w_note(w) VALUES ('prefers mail'),('asked for a refund'),('VIP since 2019'),('données à jour'),
  ('Größe L'),('日本語で連絡'),('likes 🚀 fast shipping'),('call after 5pm, "urgent"');
INSERT INTO w_word(w) VALUES ('leave'),('at'),('door'),('gift'),('wrap'),('fragile'),('urgent'),('express'),
  ('please'),('call'),('before'),('deliver'),('noon'),('evening'),('rush'),('backup'),('données'),('Größe'),
  ('日本語'),('🚀'),('red'),('blue'),('green'),('small'),('large'),('box'),('bag'),('note'),('thanks'),
  ('again'),('later'),('naïve');
INSERT INTO w_status(w) VALUES ('pending'),('paid'),('shipped'),('delivered'),('cancelled'),('refunded');

BEGIN;
INSERT INTO customers
WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < $CUST),
h AS (SELECT i, (i * 2654435761 + 12345) % 4294967296 AS h FROM seq),
g AS (SELECT i, h, (h * 1597334677) % 4294967291 AS g FROM h),
hx AS (SELECT i, h, g % $M_NAME AS x, (g / 7) % $M_CNOTE AS y FROM g)
SELECT i,
  (SELECT w FROM w_first WHERE k = 1 + x % 16) || ' ' || (SELECT w FROM w_last WHERE k = 1 + (x / 16) % 16)
    || CASE WHEN x >= 256 THEN ' ' || (x / 256) ELSE '' END,
  'user' || i || '@' || CASE h % 4 WHEN 0 THEN 'example.com' WHEN 1 THEN 'example.org' WHEN 2 THEN 'mail.test' ELSE 'corp.invalid' END,
  round(((h % 2000000) - 500000) / 100.0, 2),
  CASE WHEN h % 20 = 7 THEN NULL ELSE ((h / 7) % 10000) / 100.0 END,
  CASE WHEN h % 3 = 0 THEN 0 ELSE 1 END,
  datetime(1577836800 + (h % 157680000), 'unixepoch'),
  date(-631152000 + ((h / 3) % 1261440000), 'unixepoch'),
  CASE WHEN i % 20 = 0 THEN substr(X'89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8ffff3f0005fe02fea7d6a4c50000000049454e44ae426082', 1 + (i % 8), 16 + (i % 24)) END,
  CASE WHEN h % 10 = 3 THEN NULL
       ELSE '{"tier":"' || CASE h % 4 WHEN 0 THEN 'bronze' WHEN 1 THEN 'silver' WHEN 2 THEN 'gold' ELSE 'platinum' END
            || '","visits":' || ((h / 11) % 500)
            || ',"tags":["' || CASE (h / 13) % 4 WHEN 0 THEN 'new' WHEN 1 THEN 'vip' WHEN 2 THEN 'churn' ELSE 'promo' END || '"]'
            || ',"newsletter":' || CASE WHEN h % 2 = 0 THEN 'true' ELSE 'false' END || '}' END,
  CASE WHEN (h / 17) % 10 < 3 THEN NULL
       ELSE (SELECT w FROM w_note WHERE k = 1 + y % 8) || ' (' || (y / 8) || ')' END
FROM hx;

INSERT INTO orders
WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < $ROWS),
h AS (SELECT i, (i * 2654435761 + 99991) % 4294967296 AS h FROM seq),
g AS (SELECT i, h, (h * 1597334677) % 4294967291 AS g FROM h),
hx AS (SELECT i, h, g % $M_ONOTE AS x FROM g)
SELECT i,
  1 + (h % $CUST),
  ((h / 5) % 100000) / 100.0,
  (SELECT w FROM w_status WHERE k = 1 + (h / 7) % 6),
  datetime(1609459200 + (h % 126144000), 'unixepoch'),
  CASE WHEN (h / 11) % 5 < 2 THEN NULL
       ELSE (SELECT w FROM w_word WHERE k = 1 + x % 32) || ' ' || (SELECT w FROM w_word WHERE k = 1 + (x / 32) % 32)
            || ' #' || (x / 1024) END
FROM hx;
COMMIT;
SQL

mv "$TMP" "$OUT"
echo "wrote $OUT: $CUST customers, $ROWS orders" >&2
