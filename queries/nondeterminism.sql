-- Cells whose repetitions of the same image do not give bit-identical logits (or even the
-- same top-1): the run-to-run floor below which a difference between environments is noise.
SELECT c.cell_id,
       c.model,
       c.tag,
       count(DISTINCT o.image_id) AS images,
       count(DISTINCT CASE WHEN h.hashes > 1 THEN o.image_id END) AS images_with_varying_logits,
       count(DISTINCT CASE WHEN h.labels > 1 THEN o.image_id END) AS images_with_varying_top1
FROM outputs o
JOIN cells_latest c ON o.cell_id = c.cell_id
JOIN (SELECT cell_id, image_id, count(DISTINCT logits_hash) AS hashes, count(DISTINCT top1) AS labels
      FROM outputs GROUP BY cell_id, image_id) h
  ON h.cell_id = o.cell_id AND h.image_id = o.image_id
WHERE c.repetitions > 1
GROUP BY c.cell_id, c.model, c.tag
ORDER BY images_with_varying_top1 DESC, images_with_varying_logits DESC, c.cell_id;
