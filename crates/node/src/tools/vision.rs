//! The vision tools, real: `vision:detect` runs NanoDet on a camera's latest frame (a directory of
//! frames), an image file or an image URL; `vision:analyze` describes it from the detections and
//! measured image properties — brightness, and motion against the previous frame of the same
//! source — and names what changed (a person or vehicle appearing, a sudden scene change).
//! Announced only where the detector's files are present.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use atmosphere_vision::detector::{Detector, Rgb};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::{Handler, LocalTool, pending_contracts};

/// `[vision]`: the detector's model and the cameras this node has.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VisionSettings {
    /// `nanodet.json` (its weights beside it). Default: the model cache that
    /// `scripts/fetch-vision` fills.
    pub model: Option<PathBuf>,
    /// Camera names and where their frames are: a directory (its last image by name — frames
    /// named by time — is the current frame), an image file, or an http(s) URL of a snapshot.
    pub cameras: BTreeMap<String, String>,
}

/// Labels that count as vehicles for "a vehicle appeared".
const VEHICLES: [&str; 6] = ["car", "truck", "bus", "motorcycle", "bicycle", "train"];
/// Mean absolute difference of the grey thumbnails above which the scene changed suddenly.
const SCENE_CHANGE: f32 = 0.12;
const THUMBNAIL: usize = 32;
const MIN_SCORE: f32 = 0.35;

struct Memory {
    thumbnail: Vec<f32>,
    labels: BTreeSet<String>,
}

struct Vision {
    detector: Detector,
    cameras: BTreeMap<String, String>,
    http: Option<reqwest::Client>,
    previous: Mutex<HashMap<String, Memory>>,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

impl Vision {
    /// The current frame of `source`: a camera name, a path or a URL.
    async fn frame(&self, source: &str) -> Result<(String, Rgb), String> {
        let location = self
            .cameras
            .get(source)
            .cloned()
            .unwrap_or_else(|| source.to_owned());
        if location.starts_with("http://") || location.starts_with("https://") {
            let http = self.http.as_ref().ok_or("no HTTP client")?;
            let response = http
                .get(&location)
                .send()
                .await
                .map_err(|e| format!("{location}: {e}"))?;
            if !response.status().is_success() {
                return Err(format!("{location} answered {}", response.status()));
            }
            let bytes = response
                .bytes()
                .await
                .map_err(|e| format!("{location}: {e}"))?;
            if bytes.len() > 32 * 1024 * 1024 {
                return Err(format!(
                    "{location}: {} bytes is too large for a frame",
                    bytes.len()
                ));
            }
            let image = Rgb::from_bytes(&bytes, &location).map_err(|e| e.to_string())?;
            return Ok((location, image));
        }
        let path = PathBuf::from(&location);
        let file = if path.is_dir() {
            let newest = std::fs::read_dir(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| is_image(p))
                // Cameras name frames by time: the last name is the newest frame.
                .max_by_key(|p| p.file_name().map(|n| n.to_owned()));
            newest.ok_or_else(|| format!("{} holds no frames (png or jpeg)", path.display()))?
        } else if path.is_file() {
            path
        } else {
            let known: Vec<&String> = self.cameras.keys().collect();
            return Err(format!(
                "{source:?} is not a camera of this node ({known:?}), an image file or an http(s) URL"
            ));
        };
        let shown = file.display().to_string();
        let image = tokio::task::spawn_blocking(move || Rgb::open(&file))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok((shown, image))
    }

    async fn detect(self: &Arc<Self>, source: &str, min_score: f32) -> Result<Value, String> {
        let (frame, image) = self.frame(source).await?;
        let this = self.clone();
        let (image, found) = tokio::task::spawn_blocking(move || {
            let found = this.detector.detect(&image, min_score);
            (image, found)
        })
        .await
        .map_err(|e| e.to_string())?;
        let found = found.map_err(|e| e.to_string())?;
        Ok(json!({
            "source": source,
            "frame": frame,
            "width": image.width,
            "height": image.height,
            "detections": found.iter().map(|d| json!({
                "label": d.label,
                "score": (d.score * 1000.0).round() / 1000.0,
                "box": d.bbox.map(|v| v.round()),
            })).collect::<Vec<_>>(),
            "brightness": image.brightness(),
            "thumbnail": image.thumbnail(THUMBNAIL),
        }))
    }

    async fn analyze(self: &Arc<Self>, source: &str) -> Result<Value, String> {
        let mut detected = self.detect(source, MIN_SCORE).await?;
        let thumbnail: Vec<f32> =
            serde_json::from_value(detected["thumbnail"].take()).unwrap_or_default();
        let labels: Vec<String> = detected["detections"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|d| d["label"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let now: BTreeSet<String> = labels.iter().cloned().collect();
        let brightness = detected["brightness"].as_f64().unwrap_or(0.0) as f32;
        let previous = {
            let mut memory = self.previous.lock().unwrap_or_else(|e| e.into_inner());
            memory.insert(
                source.to_owned(),
                Memory {
                    thumbnail: thumbnail.clone(),
                    labels: now.clone(),
                },
            )
        };
        let motion = previous.as_ref().map(|p| {
            p.thumbnail
                .iter()
                .zip(&thumbnail)
                .map(|(a, b)| (a - b).abs())
                .sum::<f32>()
                / thumbnail.len().max(1) as f32
        });
        let mut anomalies = Vec::new();
        let before = previous
            .as_ref()
            .map(|p| p.labels.clone())
            .unwrap_or_default();
        for label in now.difference(&before) {
            if label == "person" {
                anomalies.push("a person appeared".to_owned());
            } else if VEHICLES.contains(&label.as_str()) {
                anomalies.push(format!("a vehicle appeared ({label})"));
            }
        }
        if motion.is_some_and(|m| m > SCENE_CHANGE) {
            anomalies.push("sudden scene change".to_owned());
        }
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for label in &labels {
            *counts.entry(label).or_default() += 1;
        }
        let seen: Vec<String> = counts
            .iter()
            .map(|(label, n)| {
                if *n == 1 {
                    format!("1 {label}")
                } else {
                    format!("{n} {label}s")
                }
            })
            .collect();
        let summary = format!(
            "{}. {}{}",
            if anomalies.is_empty() {
                "No anomalies detected".to_owned()
            } else {
                format!("Anomalies: {}", anomalies.join(", "))
            },
            if seen.is_empty() {
                "Nothing detected".to_owned()
            } else {
                format!("{} present", seen.join(", "))
            },
            if brightness < 0.15 {
                " (the scene is dark)"
            } else {
                ""
            }
        );
        Ok(json!({
            "summary": format!("{summary}."),
            "objects": labels,
            "anomalies": anomalies,
            "brightness": (brightness * 1000.0).round() / 1000.0,
            "motion": motion.map(|m| (m * 1000.0).round() / 1000.0),
            "frame": detected["frame"],
        }))
    }
}

/// `vision:detect` and `vision:analyze`, when the detector's files are there.
pub fn vision_tools(settings: &VisionSettings, models_dir: &Path) -> Vec<LocalTool> {
    let model = settings.model.clone().unwrap_or_else(|| {
        models_dir
            .join(atmosphere_vision::NANODET_DIR)
            .join("nanodet.json")
    });
    if !model.is_file() {
        if !settings.cameras.is_empty() {
            warn!(
                "cameras are configured but the detector is missing ({}): run scripts/fetch-vision",
                model.display()
            );
        }
        return Vec::new();
    }
    let detector = match Detector::load(&model) {
        Ok(detector) => detector,
        Err(e) => {
            warn!("vision tools not offered: {e}");
            return Vec::new();
        }
    };
    info!(
        cameras = settings.cameras.len(),
        "vision tools ready (NanoDet)"
    );
    let vision = Arc::new(Vision {
        detector,
        cameras: settings.cameras.clone(),
        http: atmosphere_backends::adapters::http_client(std::time::Duration::from_secs(15)).ok(),
        previous: Mutex::new(HashMap::new()),
    });
    let contracts = pending_contracts();
    let mut tools = Vec::new();
    for manifest in contracts
        .into_iter()
        .filter(|m| m.name.starts_with("vision:"))
    {
        let vision = vision.clone();
        let analyze = manifest.name == "vision:analyze";
        let handler: Handler = Arc::new(move |args: Value| {
            let vision = vision.clone();
            Box::pin(async move {
                let source = args["source"].as_str().unwrap_or_default().to_owned();
                if analyze {
                    vision.analyze(&source).await
                } else {
                    let min = args["min_score"].as_f64().unwrap_or(f64::from(MIN_SCORE)) as f32;
                    let mut out = vision.detect(&source, min).await?;
                    if let Some(object) = out.as_object_mut() {
                        object.remove("thumbnail");
                    }
                    Ok(out)
                }
            })
        });
        tools.push(LocalTool { manifest, handler });
    }
    tools
}
