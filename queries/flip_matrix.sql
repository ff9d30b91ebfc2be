-- Top-1 flip rate of every pair of cells that share a model family (a model and its variants).
-- Which environments disagree with which, and how often: first repetition, images both cells
-- ran, most flips first. Read from the derived `comparisons` table (one row per pair of cells
-- and image, computed once as parts are committed); flip_matrix_raw asks `outputs` directly.
SELECT cell_a,
       cell_b,
       count(*) AS images,
       sum(CASE WHEN flip THEN 1 ELSE 0 END) AS flips,
       round(sum(CASE WHEN flip THEN 1 ELSE 0 END) * 1.0 / count(*), 4) AS flip_rate
FROM comparisons
GROUP BY cell_a, cell_b
ORDER BY flip_rate DESC, cell_a, cell_b;
