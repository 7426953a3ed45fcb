//! Capability descriptors: what a capability does, in a sentence, and how people ask for it, in
//! example utterances. A node embeds its descriptors once and gossips the vectors; the router
//! scores intents against them. The built-in set covers the capabilities every Atmosphere node
//! knows; tools and agents bring their own.

use serde::{Deserialize, Serialize};

use crate::vector::QVec;

/// A capability as people would ask for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// The capability class: `llm`, `matter`, … (or [`crate::OUT_OF_SCOPE`] for requests no
    /// capability serves, so they are recognised rather than forced onto the nearest one).
    pub capability: String,
    pub description: String,
    pub examples: Vec<String>,
}

/// A descriptor with the embeddings of its description and examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddedDescriptor {
    pub capability: String,
    pub description: String,
    /// The description first, then one vector per example.
    pub vectors: Vec<QVec>,
}

impl Descriptor {
    fn new(capability: &str, description: &str, examples: &[&str]) -> Self {
        Self {
            capability: capability.into(),
            description: description.into(),
            examples: examples.iter().map(|e| (*e).to_owned()).collect(),
        }
    }

    /// The texts to embed: the description, then the examples.
    pub fn texts(&self) -> Vec<&str> {
        std::iter::once(self.description.as_str())
            .chain(self.examples.iter().map(String::as_str))
            .collect()
    }

    /// Attaches the embeddings of [`Descriptor::texts`], in that order.
    pub fn embedded(&self, vectors: &[Vec<f32>]) -> EmbeddedDescriptor {
        EmbeddedDescriptor {
            capability: self.capability.clone(),
            description: self.description.clone(),
            vectors: vectors.iter().map(|v| QVec::quantise(v)).collect(),
        }
    }
}

/// Descriptors a node gossips (under `descriptors`): its own capabilities' descriptions and
/// example texts with their vectors, embedded once by that node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advertised {
    pub descriptor: EmbeddedDescriptor,
    /// The texts behind `descriptor.vectors` (description first), for the trace.
    pub texts: Vec<String>,
}

/// Limits on what a peer may gossip.
pub const MAX_ADVERTISED: usize = 32;
pub const MAX_EXAMPLES: usize = 64;

impl Advertised {
    /// Decodes a peer's `descriptors` value, dropping entries that break the limits or whose
    /// vectors do not have `dims` dimensions.
    pub fn decode_list(bytes: &[u8], dims: usize) -> Result<Vec<Self>, String> {
        let list: Vec<Self> = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
        if list.len() > MAX_ADVERTISED {
            return Err(format!(
                "{} descriptors; at most {MAX_ADVERTISED}",
                list.len()
            ));
        }
        Ok(list
            .into_iter()
            .filter(|a| {
                let d = &a.descriptor;
                !d.vectors.is_empty()
                    && d.vectors.len() <= MAX_EXAMPLES + 1
                    && d.vectors.len() == a.texts.len()
                    && d.vectors
                        .iter()
                        .all(|v| v.len() == dims && v.scale.is_finite())
                    && !d.capability.is_empty()
                    && d.capability.len() <= 64
                    && d.description.len() <= 1024
                    && a.texts.iter().all(|t| t.len() <= 1024)
            })
            .collect())
    }

    pub fn encode_list(list: &[Self]) -> Vec<u8> {
        postcard::to_allocvec(list).unwrap_or_default()
    }
}

/// The capabilities every node knows how to describe.
pub fn builtin() -> Vec<Descriptor> {
    vec![
        Descriptor::new(
            "llm",
            "General questions, reasoning, writing, maths, coding, translation and conversation \
             answered by a language model.",
            &[
                "what is the square root of 144",
                "how much is 15 percent of 80",
                "explain photosynthesis like I'm five",
                "write me a haiku about the sea",
                "summarise the causes of the first world war",
                "how do I say thank you very much in Japanese",
                "what should I cook tonight with chicken and potatoes",
                "write a cover letter for a junior developer job",
                "what is the difference between weather and climate",
                "debug this javascript: why is my loop printing undefined",
                "tell me a funny story",
                "who painted the Mona Lisa",
                "give me tips for sleeping better",
                "explain how public key cryptography works",
                "evaluate the risks of exposing our home server to the internet",
                "reason step by step about the best strategy for paying off two loans",
                "write a SQL query that counts orders per customer",
                "what's a synonym for happy",
                "hi there, what can you do",
                "can you help me plan a birthday party for a six year old",
                "critique the architecture of a system that stores passwords in plain text",
                "how far is the moon from the earth",
                "what are the main ideas of stoic philosophy",
                "rewrite this paragraph to sound more formal",
                "what year did the berlin wall fall",
                "how do airplanes stay in the air",
                "can you explain what inflation is",
                "write a short speech for my friend's wedding",
                "what is 3 to the power of 5",
                "help me understand this error message from my compiler",
                "make up a bedtime story about a dragon",
                "what are the symptoms of dehydration",
                "give me an argument for and against remote work",
                "how do I make sourdough bread",
                "what's the meaning of the idiom break a leg",
                "design a database schema for a small library",
                "good morning! how's it going",
                "think carefully and assess the weaknesses of this business plan",
                "what is machine learning",
                "list some fun things to do on a rainy day",
                "how many legs does a spider have",
                "calculate the area of a circle with radius 4",
                "teach me the basics of chess",
                "what's the plural of cactus",
                "draft a thank-you note for my neighbour",
                "compose an email asking my landlord to fix the boiler",
                "convert 5 miles to kilometres",
                "how many grams are in a pound",
                "what's a word that means very big",
                "is coffee bad for your heart",
                "what time is it in tokyo when it's noon in london",
                "give me a recipe for pancakes",
                "who was the first person on the moon",
                "what are the security risks in how our smart devices are connected",
                "assess the weak points of our wifi and firewall setup",
                "discuss the privacy implications of cloud cameras",
            ],
        ),
        Descriptor::new(
            "embeddings",
            "Turn text into embedding vectors and measure semantic similarity between texts.",
            &[
                "embed this text",
                "give me the embedding vector of this sentence",
                "compute sentence embeddings for my list",
                "how semantically similar are these two sentences",
                "cosine similarity of two phrases",
                "vectorise these documents for a search index",
                "encode this query as a dense vector",
                "get embeddings for a batch of strings",
                "which sentences mean nearly the same thing",
                "similarity score between two texts",
                "turn words into numeric vectors",
                "run the sentence embedding model",
                "turn this sentence into a vector",
                "what is the embedding for the phrase good night",
                "how close in meaning are these words",
                "produce vectors for semantic search",
                "find near-duplicate sentences in this list",
                "compare the meaning of two product reviews",
                "encode my notes as embeddings",
                "give me the similarity between apple and orange",
                "vector for the text 'open the window'",
                "embedding of the phrase 'switch on the radio'",
                "similarity of 'close the door' and 'shut the door'",
            ],
        ),
        Descriptor::new(
            "vision",
            "Look at cameras, photos and images: describe scenes, detect people, cars and objects, \
             read text in pictures.",
            &[
                "what does the driveway camera see",
                "is someone standing at the front door",
                "show me the backyard cam",
                "describe this image",
                "what is written on this label",
                "how many people can you see in the picture",
                "is there a vehicle parked in the garage",
                "look at the camera and check on the dog",
                "identify the object in this photo",
                "did the camera catch any movement",
                "what colour is this jacket",
                "read the expiry date on this package",
                "snapshot of the porch camera",
                "is anything strange happening on the security cameras",
                "what brand is this bottle",
                "check the baby cam",
                "who is at the gate",
                "any cars outside right now",
                "what's in front of the camera",
                "can you see if the window is open on the camera feed",
                "tell me what this photo shows",
                "what kind of food is this",
                "can you read this receipt picture",
                "does the picture show any damage",
                "check the garden camera for animals",
                "how does the parking spot look on the cam",
                "what's the text on this screen",
                "is the light on in the image from the shed camera",
            ],
        ),
        Descriptor::new(
            "rag",
            "Answer from our own documents: household policies, device manuals, contracts, notes \
             and records, with citations.",
            &[
                "what does our policy say about visitors",
                "according to the manual how do I reset the device",
                "find the warranty details for the washing machine",
                "look it up in our house documents",
                "what did we note about the boiler service",
                "search the manuals for the error code meaning",
                "what are the rules in our family agreement",
                "what does the contract say about termination",
                "where in the guide does it explain installation",
                "what's our procedure when the internet is down",
                "in our notes, when was the last inspection",
                "which devices does the security policy allow",
                "what is the serial number in our inventory",
                "per the instructions, how often do I replace the filter",
                "what do my documents say about insurance",
                "check the knowledge base for the recovery steps",
                "what does the handbook say about this",
                "how does the manual tell me to clean it",
                "our documents mention a maintenance schedule, what is it",
                "what's written in our rules about pets",
                "when is my next payslip due according to my records",
                "check my records for the last refund",
                "what does the lease agreement require",
                "find the instructions for setting up the printer in our docs",
                "what do the notes from the electrician say",
                "what's our policy on cameras",
                "look up the emergency contacts in our house binder",
                "what does the guide recommend for battery care",
            ],
        ),
        Descriptor::new(
            "notification",
            "Send notifications, alerts, reminders and messages to people's phones, chats, e-mail \
             or webhooks, now or when something happens.",
            &[
                "send me an alert when the door opens",
                "notify me when the laundry is done",
                "remind me tomorrow morning to water the plants",
                "text my husband that I'll be home soon",
                "let everyone know the meeting moved",
                "warn me if the temperature gets too high",
                "message me when the battery is low",
                "tell me when the delivery arrives",
                "push a notification to my phone",
                "email me the report every evening",
                "ping the family group chat",
                "alert me if there's a leak",
                "let me know when my car is fully charged",
                "send a reminder about the appointment",
                "post a message to the webhook",
                "notify me if motion is detected",
                "when the garage door opens send me a message",
                "notify me if the freezer gets warm",
                "ping my phone when the kids arrive home",
                "let me know if the power fails",
                "alert the family when the alarm goes off",
                "send a text to mum saying happy birthday",
                "inform me when the print job finishes",
                "notify me if the basement gets damp",
                "when someone is at the door, alert me",
                "shoot a message to my partner",
                "tell me if the humidity gets too high",
                "alert me when a door stays open too long",
                "warn me if the fridge temperature rises",
                "send me a message if the water level goes above the limit",
            ],
        ),
        Descriptor::new(
            "matter",
            "Control and query smart-home devices: lights, plugs, switches, thermostats, locks, \
             blinds, fans and sensors.",
            &[
                "turn on the kitchen lights",
                "switch off the lamp",
                "dim the bedroom light",
                "set the heating to 20 degrees",
                "is the hallway light on",
                "lock the back door",
                "open the blinds",
                "turn off every light",
                "turn on the fan",
                "make the lights brighter",
                "what temperature does the sensor read",
                "switch the smart plug on",
                "close the garage door",
                "change the light colour to red",
                "is the front door locked",
                "turn the air conditioner down",
                "lights on in the office please",
                "is the room occupied right now",
                "switch the living room lamp off",
                "set the lights to half brightness",
                "turn on the porch light",
                "is the kitchen light still on",
                "make it warmer in here",
                "open the curtains",
                "turn the bathroom fan off",
                "unlock the door for the guests",
                "what's the humidity in the basement",
                "power off the plug by the tv",
                "set the bedroom to 18 degrees",
                "are the lights in the garage off",
            ],
        ),
        Descriptor::new(
            "system",
            "Health and resources of the mesh's machines: CPU, memory, disk, load, uptime, node \
             status and backend health.",
            &[
                "how much free memory is there",
                "what's the cpu usage",
                "how full is the disk",
                "how long has this machine been running",
                "is everything healthy",
                "show the status of every node",
                "which process uses the most cpu",
                "what's the load on the server",
                "is any machine overloaded",
                "check the health of the backends",
                "how much storage is free on each node",
                "are all nodes online",
                "system information for this node",
                "why is the machine slow",
                "show resource usage",
                "list the running processes",
                "show kernel version",
                "who is logged in on this machine",
                "report disk usage",
                "show memory usage by process",
                "what's the hostname and os of this node",
                "is the cpu hot",
                "how much space is left on the drive",
                "uptime of the servers",
                "health check of the mesh",
                "is the model server up",
                "how many requests are in flight on each node",
                "which service is unhealthy",
                "is the llm backend responding",
                "what's the network throughput of this node",
            ],
        ),
        Descriptor::new(
            "routing",
            "Explain and test how the mesh routes requests: which node or model would handle \
             something, routes, hops and providers.",
            &[
                "which node would handle this request",
                "where would this question be routed",
                "which machine runs the largest model",
                "show me the route for a camera request",
                "which node serves the language model",
                "how many hops to that node",
                "why was my request sent to that machine",
                "which nodes provide this capability",
                "dry run the routing for this intent",
                "send this request to the biggest model",
                "what's the best node for this task",
                "show the routing decision trace",
                "who is the fallback provider if that node fails",
                "what model tier would you choose for this",
                "where will my question go",
                "which node answers questions about the camera",
                "which machine would you send a translation to",
                "route this intent and tell me the node",
                "which node handles smart home requests",
                "what path does a request take to the server",
                "which model would answer a hard question",
                "where would a notification request be sent",
                "which node is best for embeddings",
                "show how a device command would be routed",
                "which node would answer 'dim the lights'",
                "route 'what is on the porch camera' as a dry run",
                "what would the router do with 'send me an alert'",
                "test the routing of 'how much disk is free' without executing",
                "which capability does 'water the plants' map to",
                "who takes over if the server goes offline",
                "which provider comes next after the best one",
                "force this question onto the largest model",
            ],
        ),
        Descriptor::new(
            crate::OUT_OF_SCOPE,
            "Requests no capability in the home mesh serves: shopping, payments, travel bookings, \
             music and media playback, phone calls, calendars, alarms, news, weather, sports and \
             traffic.",
            &[
                "buy me new running shoes",
                "order groceries for delivery",
                "book a hotel room",
                "pay the water bill",
                "play my favourite playlist",
                "call my sister",
                "what's the forecast for the weekend",
                "what's the latest news",
                "how did my team do last night",
                "add a meeting to my calendar",
                "wake me up at six",
                "get me a taxi",
                "what's my account balance",
                "how much is the euro worth in dollars today",
                "next song",
                "find a restaurant nearby",
                "what's the traffic on the highway",
                "share this on social media",
                "play a song by the beatles",
                "stream the movie on netflix",
                "call the plumber",
                "set a timer for ten minutes",
                "what's on my schedule tomorrow",
                "book a doctor's appointment",
                "what time is the bus",
                "order a taxi to the station",
                "buy tickets for the concert",
                "send money to my friend",
                "what's the weather like outside",
                "read me the sports results",
                "pause the music",
                "add eggs to my shopping list",
                "how much does a flight to paris cost",
                "track my order",
                "renew my driving licence",
                "send a gift to my cousin",
                "how are stocks doing today",
                "upload this picture to facebook",
                "set an alarm for tomorrow morning",
                "check in for my flight",
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advertised(capability: &str, dims: usize, vectors: usize) -> Advertised {
        let descriptor = Descriptor {
            capability: capability.into(),
            description: "d".into(),
            examples: (1..vectors).map(|i| format!("e{i}")).collect(),
        };
        let embedded = descriptor.embedded(&vec![vec![0.1; dims]; vectors]);
        Advertised {
            descriptor: embedded,
            texts: descriptor.texts().iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    #[test]
    fn gossiped_descriptors_round_trip_and_bad_ones_are_dropped() {
        let good = advertised("garden", 384, 3);
        let wrong_dims = advertised("pool", 12, 3);
        let bytes = Advertised::encode_list(&[good.clone(), wrong_dims]);
        assert_eq!(Advertised::decode_list(&bytes, 384).unwrap(), vec![good]);
        let flood: Vec<Advertised> = (0..MAX_ADVERTISED + 1)
            .map(|i| advertised(&format!("c{i}"), 4, 1))
            .collect();
        assert!(Advertised::decode_list(&Advertised::encode_list(&flood), 4).is_err());
        assert!(Advertised::decode_list(b"\xff\xff\xff\xff", 384).is_err());
    }
}
