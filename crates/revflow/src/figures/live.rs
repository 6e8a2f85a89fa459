//! A 2-D flow's pictures while it learns (the web page's playground): the gallery's panels —
//! learned density, latents, latent grid pulled back — one picture each, and the points after
//! every layer, to step through the flow forward and back.

use burn::tensor::Device;
use image::RgbImage;

use super::coupling::{describe, key_coordinate};
use super::gallery::{self, Frame, LATENT_VIEW};
use super::{tensor, to_points};
use crate::error::Result;
use crate::flow::Flow;
use crate::layers::Layer;
use crate::models::FlatFlow;
use crate::pictures::plot;

/// Side of each picture, in pixels.
const SIDE: u32 = 320;

/// The three pictures of a flow at one moment of its training.
pub struct Snapshot {
    pub density: RgbImage,
    pub latents: RgbImage,
    pub grid: RgbImage,
}

/// The pictures of `flow` over the points `data` (a sample of its test set).
pub fn snapshot(flow: &FlatFlow, data: &[[f64; 2]], device: &Device) -> Result<Snapshot> {
    let view = gallery::window(data);
    let n = 160;
    let (p, _) = gallery::density(flow, view, n, device)?;
    let heat = gallery::heat_map(&p, n);
    let latents = to_points(flow.flow.forward(tensor(data, device), None)?.0);
    let colours = gallery::colours(data, view);
    let grid = gallery::pulled_back_grid(flow, device)?;
    Ok(Snapshot {
        density: plot::draw(SIDE, SIDE, |area| {
            gallery::heat_panel(area, "learned density p(x)", &heat)
        })?,
        latents: plot::draw(SIDE, SIDE, |area| {
            let title = "latents z = f(x)";
            gallery::scatter_panel(area, title, &latents, &colours, LATENT_VIEW, Frame::Bare)
        })?,
        grid: plot::draw(SIDE, SIDE, |area| {
            gallery::grid_panel(area, "f⁻¹(latent grid)", data, &grid, view, Frame::Bare)
        })?,
    })
}

/// The points after one layer.
pub struct LayerStep {
    /// What the layer does, in one line ("data x" for the input).
    pub name: String,
    /// The coordinate a coupling kept unchanged (its key), if one.
    pub key: Option<usize>,
    pub points: Vec<[f64; 2]>,
}

/// `data`, then the points after each layer of `flow` in turn: the last are the latents.
/// Going back through the list is the inverse, exactly (the round trip is tested in the
/// coupling figure).
pub fn layer_points(flow: &FlatFlow, data: &[[f64; 2]], device: &Device) -> Result<Vec<LayerStep>> {
    let mut steps = vec![LayerStep {
        name: "data x".into(),
        key: None,
        points: data.to_vec(),
    }];
    for layer in &flow.flow.layers {
        let before = &steps.last().expect("the data").points;
        let after = to_points(layer.forward(tensor(before, device), None)?.0);
        let key = match layer {
            Layer::Coupling(_) => key_coordinate(before, &after),
            _ => None,
        };
        steps.push(LayerStep {
            name: describe(layer, before, &after),
            key,
            points: after,
        });
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Model, ModelConfig, VectorFlowConfig};

    #[test]
    fn layer_points_end_at_the_latents_and_couplings_keep_their_key() {
        let device = Device::default();
        let config = ModelConfig::Vector(VectorFlowConfig::default());
        let Ok(Model::Flat(flow)) = config.init(&device) else {
            panic!("a vector flow")
        };
        let data: Vec<[f64; 2]> = (0..50).map(|i| [i as f64 / 10.0, (i % 7) as f64]).collect();
        let steps = layer_points(&flow, &data, &device).unwrap();
        assert_eq!(steps.len(), flow.flow.layers.len() + 1);
        let z = to_points(flow.flow.forward(tensor(&data, &device), None).unwrap().0);
        let last = &steps.last().unwrap().points;
        for (a, b) in z.iter().zip(last) {
            assert!((a[0] - b[0]).abs() < 1e-5 && (a[1] - b[1]).abs() < 1e-5);
        }
        let couplings = (flow.flow.layers.iter())
            .filter(|l| matches!(l, Layer::Coupling(_)))
            .count();
        assert!(couplings > 0);
        assert_eq!(steps.iter().filter(|s| s.key.is_some()).count(), couplings);
        let pictures = snapshot(&flow, &data, &device).unwrap();
        assert_eq!(pictures.density.dimensions(), (SIDE, SIDE));
    }
}
