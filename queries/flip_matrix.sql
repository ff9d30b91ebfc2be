-- Top-1 flip rate of every pair of cells that share a model family (a model and its variants).
-- Which environments disagree with which, and how often: first repetition, images both cells
-- ran, most flips first.
WITH o AS (
  SELECT p.cell_id, p.image_id, p.top1, c.family
  FROM outputs p JOIN cells_latest c ON p.cell_id = c.cell_id
  WHERE p.repetition = 0
)
SELECT a.cell_id AS cell_a,
       b.cell_id AS cell_b,
       count(*) AS images,
       sum(CASE WHEN a.top1 <> b.top1 THEN 1 ELSE 0 END) AS flips,
       round(avg(CASE WHEN a.top1 <> b.top1 THEN 1.0 ELSE 0.0 END), 4) AS flip_rate
FROM o a
JOIN o b ON a.image_id = b.image_id AND a.family = b.family AND a.cell_id < b.cell_id
GROUP BY a.cell_id, b.cell_id
ORDER BY flip_rate DESC, cell_a, cell_b;
