//! The device's memory bandwidth, measured with buffer-to-buffer copies: what `tessera bench`
//! divides a decode token's weight bytes by for the roofline of a `--target vulkan` artifact.

use super::{VulkanDevice, VulkanError};
use std::time::Instant;

impl VulkanDevice {
    /// Median GB/s (10⁹ bytes per second, bytes read plus bytes written) of `passes` copies of a
    /// `bytes`-byte buffer (clamped to the device's largest), after one untimed copy.
    pub fn copy_bandwidth_gb_s(&self, bytes: u64, passes: usize) -> Result<f64, VulkanError> {
        let bytes = bytes.min(self.limits.max_buffer_size) / 4 * 4;
        let make = |name| {
            self.captured(|| self.storage_buffer(name, bytes))
                .map_err(|e| VulkanError::Device {
                    adapter: self.summary().name.clone(),
                    message: format!("allocating {bytes} bytes to measure bandwidth: {e}"),
                })
        };
        let (from, to) = (make("bandwidth source")?, make("bandwidth target")?);
        let mut seconds = Vec::with_capacity(passes);
        for pass in 0..=passes {
            let mut encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            encoder.copy_buffer_to_buffer(&from, 0, &to, 0, bytes);
            let start = Instant::now();
            self.queue.submit([encoder.finish()]);
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| VulkanError::Device {
                    adapter: self.summary().name.clone(),
                    message: format!("waiting for a copy: {e}"),
                })?;
            if pass > 0 {
                seconds.push(start.elapsed().as_secs_f64());
            }
        }
        seconds.sort_by(f64::total_cmp);
        Ok(2.0 * bytes as f64 / seconds[seconds.len() / 2] / 1e9)
    }
}
