-- Top-1 and top-5 accuracy of every cell on the labelled images (first repetition).
-- Which environment is most accurate, and how far each falls behind.
SELECT c.cell_id,
       c.model,
       c.tag,
       count(*) AS labelled,
       round(avg(CASE WHEN o.top1 = o.label THEN 1.0 ELSE 0.0 END), 4) AS top1_accuracy,
       round(avg(CASE WHEN array_has(o.top5, o.label) THEN 1.0 ELSE 0.0 END), 4) AS top5_accuracy
FROM outputs o JOIN cells_latest c ON o.cell_id = c.cell_id
WHERE o.repetition = 0 AND o.label IS NOT NULL
GROUP BY c.cell_id, c.model, c.tag
ORDER BY top1_accuracy DESC, c.cell_id;
