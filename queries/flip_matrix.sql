-- Top-1 flip rate of every pair of cells that share a model family (a model and its variants).
-- Which environments disagree with which, and how often: first repetition, images both cells
-- ran, most flips first. Read from the derived `comparisons` table (one row per pair of cells
-- and image, computed once as parts are committed), grouped by the pair's number and named
-- from `pairs`; flip_matrix_raw asks `outputs` directly.
SELECT p.cell_a,
       p.cell_b,
       c.images,
       c.flips,
       round(c.flips * 1.0 / c.images, 4) AS flip_rate
FROM (SELECT pair,
             count(*) AS images,
             sum(CASE WHEN flip THEN 1 ELSE 0 END) AS flips
      FROM comparisons
      GROUP BY pair) c
JOIN pairs p ON p.pair = c.pair
ORDER BY flip_rate DESC, p.cell_a, p.cell_b;
