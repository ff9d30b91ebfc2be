-- The images whose top-1 varies most across the cells of a model family.
-- Distinct top-1 labels, and how many cells hold the most common answer: a low share means the
-- environments really disagree, not one outlier.
WITH answers AS (
  SELECT c.family, o.image_id, o.top1, count(*) AS cells
  FROM outputs o JOIN cells_latest c ON o.cell_id = c.cell_id
  WHERE o.repetition = 0
  GROUP BY c.family, o.image_id, o.top1
)
SELECT family,
       image_id,
       count(*) AS distinct_top1,
       sum(cells) AS cells,
       round(max(cells) * 1.0 / sum(cells), 4) AS majority_share
FROM answers
GROUP BY family, image_id
HAVING count(*) > 1
ORDER BY distinct_top1 DESC, majority_share, family, image_id;
