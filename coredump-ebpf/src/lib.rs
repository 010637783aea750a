#![no_std]
// This file exists to enable the library target: the agent lists this crate as a
// build-dependency so that cargo rebuilds it when the probe's sources change.
