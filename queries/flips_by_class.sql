-- Ground-truth classes whose images change top-1 across environments most often.
-- For each labelled image and model family: does any cell's top-1 differ from another's?
-- Classes with the most such images first.
WITH per_image AS (
  SELECT c.family, o.image_id, o.label, count(DISTINCT o.top1) AS labels
  FROM outputs o JOIN cells_latest c ON o.cell_id = c.cell_id
  WHERE o.repetition = 0 AND o.label IS NOT NULL
  GROUP BY c.family, o.image_id, o.label
)
SELECT family,
       label,
       count(*) AS images,
       sum(CASE WHEN labels > 1 THEN 1 ELSE 0 END) AS flipped_images,
       round(avg(CASE WHEN labels > 1 THEN 1.0 ELSE 0.0 END), 4) AS flip_share
FROM per_image
GROUP BY family, label
HAVING sum(CASE WHEN labels > 1 THEN 1 ELSE 0 END) > 0
ORDER BY flipped_images DESC, family, label;
