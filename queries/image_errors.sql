-- Per-image failures by stage and reason: images that could not be decoded (no cell saw them)
-- and images an engine rejected, most common reasons first.
SELECT stage,
       message,
       count(*) AS failures,
       count(DISTINCT image_id) AS images,
       count(DISTINCT cell_id) AS cells,
       min(image_id) AS example_image
FROM errors
GROUP BY stage, message
ORDER BY failures DESC, stage, message;
