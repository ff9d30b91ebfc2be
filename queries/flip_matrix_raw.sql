-- The flip matrix (see flip_matrix) computed from the raw `outputs` alone, without the derived
-- tables: a self-join of every cell's first repetition per image within each model family. It
-- gives the same numbers; it is kept to check the derived tables and for other engines (DuckDB).

-- Cells, families and images are numbered first so that the pair join (cells x cells x images,
-- 24 million rows on a one-million-row store) joins and groups integers, not strings.
WITH c AS (
  SELECT cell_id,
         row_number() OVER (ORDER BY cell_id) AS n,
         dense_rank() OVER (ORDER BY family) AS f
  FROM cells_latest
),
i AS (
  SELECT image_id, row_number() OVER (ORDER BY image_id) AS k
  FROM (SELECT DISTINCT image_id FROM images)
),
o AS (
  SELECT c.n, c.f, i.k, p.top1
  FROM outputs p
  JOIN c ON p.cell_id = c.cell_id
  JOIN i ON p.image_id = i.image_id
  WHERE p.repetition = 0
),
pairs AS (
  SELECT a.n AS na, b.n AS nb,
         count(*) AS images,
         sum(CASE WHEN a.top1 <> b.top1 THEN 1 ELSE 0 END) AS flips
  FROM o a
  JOIN o b ON a.k = b.k AND a.f = b.f AND a.n < b.n
  GROUP BY a.n, b.n
)
SELECT ca.cell_id AS cell_a,
       cb.cell_id AS cell_b,
       pairs.images,
       pairs.flips,
       round(pairs.flips * 1.0 / pairs.images, 4) AS flip_rate
FROM pairs
JOIN c ca ON ca.n = pairs.na
JOIN c cb ON cb.n = pairs.nb
ORDER BY flip_rate DESC, cell_a, cell_b;
