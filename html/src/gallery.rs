//! The gallery of the least stable images: a thumbnail of each (from the file the collector read,
//! upright, JPEG in a data URI) and every cell's top-5 for it, the deviating answers marked.

use std::collections::HashMap;
use std::fmt::Write;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use deltann_analyzer::analysis::Analysis;
use deltann_analyzer::detail::Detail;

use crate::{Options, Page, Result, esc};

/// A picture file as a JPEG thumbnail at most `side` pixels a side, upright (EXIF orientation
/// applied); `None` when the file is gone or does not decode.
fn thumbnail(path: &Path, side: u32) -> Option<Vec<u8>> {
    let img = deltann_analyzer::pictures::upright(path, side)?;
    let rgb = img.into_rgb8();
    let mut out = Cursor::new(Vec::new());
    rgb.write_to(&mut out, image::ImageFormat::Jpeg).ok()?;
    Some(out.into_inner())
}

pub(crate) fn section(
    page: &mut Page,
    a: &Analysis,
    detail: &Detail,
    paths: &HashMap<String, PathBuf>,
    options: &Options,
) -> Result<()> {
    page.section(
        "gallery",
        "Least stable images",
        "Images whose top-1 differs most between the cells of their family (fewest cells on the \
         majority answer first), with every cell's top-5; answers other than the majority's are \
         shaded.",
    );
    if a.disagreement.unstable.is_empty() {
        page.out
            .push_str("<p>Every cell of each family gives every image the same top-1.</p>\n");
        return Ok(());
    }
    page.out.push_str("<div class=\"gallery\">\n");
    for u in a.disagreement.unstable.iter().take(options.gallery) {
        let g = &a.groups[u.group];
        let _ = write!(page.out, "<div class=\"card\">");
        match paths
            .get(&u.image_id)
            .and_then(|p| thumbnail(p, options.thumbnail))
        {
            Some(jpeg) => {
                let _ = write!(
                    page.out,
                    "<img alt=\"{}\" src=\"data:image/jpeg;base64,{}\">",
                    esc(&u.image_id),
                    base64::engine::general_purpose::STANDARD.encode(jpeg)
                );
            }
            None => {
                let _ = write!(
                    page.out,
                    "<div class=\"missing\">picture not found{}</div>",
                    paths
                        .get(&u.image_id)
                        .map(|p| format!(" at {}", esc(&p.display().to_string())))
                        .unwrap_or_default()
                );
            }
        }
        let _ = write!(
            page.out,
            "<b>{}</b><br>{}<br>truth: {}<br>majority: {} ({} of {} cells agree); {} distinct \
             answers",
            esc(&u.image_id),
            esc(&g.family),
            u.label
                .map_or_else(|| "unlabelled".into(), |l| esc(&g.class_name(l))),
            esc(&g.class_name(u.majority)),
            (u.majority_share * f64::from(u.cells)).round(),
            u.cells,
            u.distinct
        );
        page.out
            .push_str("<table><tr><th>cell</th><th>environment</th><th>top-5</th></tr>");
        for row in detail.lookup(&u.image_id)? {
            if !g.cells.contains(&row.cell) {
                continue;
            }
            let deviates = row.top5.first().is_some_and(|&t| t != u.majority);
            let top5: Vec<String> = row
                .top5
                .iter()
                .zip(row.top5_prob.iter().chain(std::iter::repeat(&f32::NAN)))
                .map(|(&c, &p)| {
                    if p.is_finite() {
                        format!("{} {:.2}", g.class_name(c), p)
                    } else {
                        g.class_name(c)
                    }
                })
                .collect();
            let _ = write!(
                page.out,
                "<tr><td>#{}</td><td>{}</td><td{}>{}</td></tr>",
                row.cell + 1,
                esc(&a.cells[row.cell].env()),
                if deviates { " class=\"deviates\"" } else { "" },
                esc(&top5.join(", "))
            );
        }
        page.out.push_str("</table></div>\n");
    }
    page.out.push_str("</div>\n");
    Ok(())
}
